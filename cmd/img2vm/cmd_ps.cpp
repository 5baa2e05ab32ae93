// `img2vm ps [-a] [-q] [--json]`: the VMs, as docker ps lists containers (running ones unless
// -a), newest first.
#include <iostream>

#include "commands.hpp"
#include "vm_refs.hpp"

namespace img2vm::cli {

namespace {

struct PsArgs {
  bool all = false, quiet = false;
};

std::string command_text(const runtime::VmRecord& r) {
  std::string s;
  for (const auto& w : r.command) s += (s.empty() ? "" : " ") + w;
  if (s.size() > 20) s = s.substr(0, 19) + "…";
  return "\"" + s + "\"";
}

int ps(const PsArgs& a, const Globals& g) {
  runtime::VmStore store;
  std::vector<runtime::VmRecord> vms;
  for (auto& r : store.list())
    if (a.all || r.status == runtime::VmStatus::kRunning) vms.push_back(std::move(r));
  if (a.quiet) {
    for (const auto& r : vms) std::cout << r.id.substr(0, 12) << "\n";
    return kExitOk;
  }
  if (g.json) {
    for (const auto& r : vms)
      std::cout << nlohmann::json{{"ID", r.id},
                                  {"Image", r.image},
                                  {"Command", r.command},
                                  {"CreatedAt", r.created},
                                  {"State", runtime::to_string(r.status)},
                                  {"Status", vm_status_text(r)},
                                  {"ExitCode", r.exit_code ? nlohmann::json(*r.exit_code)
                                                           : nlohmann::json(nullptr)},
                                  {"Names", r.name}}
                       .dump()
                << "\n";
    return kExitOk;
  }
  // Columns padded by characters, not bytes (COMMAND may end in a multi-byte "…").
  auto pad = [](const std::string& v, size_t width) {
    size_t chars = 0;
    for (unsigned char c : v) chars += (c & 0xc0) != 0x80;
    return v + std::string(chars < width ? width - chars : 1, ' ');
  };
  auto row = [&](const std::string& id, const std::string& image, const std::string& cmd,
                 const std::string& created, const std::string& status, const std::string& name) {
    std::cout << pad(id, 15) << pad(image, 23) << pad(cmd, 25) << pad(created, 17)
              << pad(status, 27) << name << "\n";
  };
  row("CONTAINER ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "NAMES");
  for (const auto& r : vms)
    row(r.id.substr(0, 12), r.image, command_text(r), vm_elapsed(r.created) + " ago",
        vm_status_text(r), r.name);
  return kExitOk;
}

}  // namespace

void register_ps(CLI::App& app, Globals& g, Action* slot) {
  auto a = std::make_shared<PsArgs>();
  auto* sub = app.add_subcommand("ps", "List VMs (running ones; -a all), like docker ps");
  add_global_flags(*sub);
  sub->add_flag("-a,--all", a->all, "Show every VM, ended ones too");
  sub->add_flag("-q,--quiet", a->quiet, "Only the ids");
  sub->callback([slot, a, &g] { *slot = [a, &g] { return ps(*a, g); }; });
}

}  // namespace img2vm::cli
