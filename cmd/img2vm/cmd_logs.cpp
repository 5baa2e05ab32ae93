// `img2vm logs [-f] [--tail N] [-t] VM`: a VM's console and the VMM's messages on stdout, the
// workload's stderr on stderr, as docker logs.
#include <iostream>

#include "commands.hpp"
#include "vm_refs.hpp"

namespace img2vm::cli {

namespace {

struct LogsArgs {
  std::string ref, tail = "all";
  bool follow = false, timestamps = false;
};

int logs(const LogsArgs& a) {
  runtime::LogOptions o;
  o.timestamps = a.timestamps;
  if (a.tail != "all") {
    if (a.tail.empty() || a.tail.size() > 9 ||
        a.tail.find_first_not_of("0123456789") != std::string::npos)
      throw Error(ErrorKind::kInvalidArgument,
                  "--tail: not a number of lines: " + a.tail.substr(0, 32));
    o.tail = std::stoul(a.tail);
  }
  runtime::VmStore store;
  runtime::VmRecord r = store.get(a.ref);
  // As docker logs: the workload's stderr on stderr, the rest on stdout, in the order written.
  auto out = [](std::string_view s, runtime::ConsoleLog::Stream stream) {
    std::ostream& to = stream == runtime::ConsoleLog::Stream::kStderr ? std::cerr : std::cout;
    to << s;
    to.flush();
  };
  if (a.follow)
    runtime::follow_console_log(store, r.id, o, out);
  else
    runtime::read_console_log(store.vm_dir(r.id), o, out);
  return kExitOk;
}

}  // namespace

void register_logs(CLI::App& app, Globals& /*g*/, Action* slot) {
  auto a = std::make_shared<LogsArgs>();
  auto* sub = app.add_subcommand("logs", "Show a VM's console output, like docker logs");
  add_global_flags(*sub);
  sub->add_flag("-f,--follow", a->follow, "Follow the output until the VM ends");
  sub->add_option("-n,--tail", a->tail, "Only the last N lines (default: all)");
  sub->add_flag("-t,--timestamps", a->timestamps, "Show each line's time (RFC 3339, ns)");
  sub->add_option("vm", a->ref, "VM name or id (a unique prefix is enough)")->required();
  sub->callback([slot, a] { *slot = [a] { return logs(*a); }; });
}

}  // namespace img2vm::cli
