// `img2vm volume create|ls|inspect|rm|prune`: the volumes `run -v NAME:/path` uses, as docker's
// `docker volume` commands (runtime::VolumeStore does the work; this file parses and prints).
#include <iostream>
#include <nlohmann/json.hpp>

#include "cli.hpp"
#include "commands.hpp"
#include "format.hpp"
#include "img2vm/base/error.hpp"
#include "img2vm/runtime/volumes.hpp"

namespace img2vm::cli {

namespace {

struct VolumeArgs {
  std::string name;
  std::vector<std::string> names;
  bool quiet = false, force = false, all = false;
};

// docker volume inspect's fields.
nlohmann::json inspect_json(const runtime::Volume& v) {
  nlohmann::json labels = nlohmann::json::object();
  if (v.anonymous) labels["com.docker.volume.anonymous"] = "";
  return {{"CreatedAt", v.created_at},
          {"Driver", "local"},
          {"Labels", labels},
          {"Mountpoint", v.mountpoint.string()},
          {"Name", v.name},
          {"Options", nullptr},
          {"Scope", "local"},
          {"Anonymous", v.anonymous}};
}

int create(const VolumeArgs& a) {
  std::cout << runtime::VolumeStore().create(a.name).name << "\n";
  return kExitOk;
}

int list(const VolumeArgs& a, const Globals& g) {
  runtime::VolumeStore vs;
  if (!g.json && !a.quiet) std::cout << "DRIVER    VOLUME NAME\n";
  for (const auto& v : vs.list()) {
    if (g.json)
      std::cout << nlohmann::json{{"Name", v.name},
                                  {"Driver", "local"},
                                  {"Mountpoint", v.mountpoint.string()},
                                  {"CreatedAt", v.created_at},
                                  {"Anonymous", v.anonymous},
                                  {"Size", vs.disk_usage(v)}}
                       .dump()
                << "\n";
    else
      std::cout << (a.quiet ? "" : "local     ") << v.name << "\n";
  }
  return kExitOk;
}

int inspect(const VolumeArgs& a) {
  runtime::VolumeStore vs;
  nlohmann::json out = nlohmann::json::array();
  for (const auto& n : a.names) {
    auto v = vs.find(n);
    if (!v) throw Error(ErrorKind::kNotFound, "no such volume: " + n);
    out.push_back(inspect_json(*v));
  }
  std::cout << out.dump(4) << "\n";
  return kExitOk;
}

// Each name in turn, as docker: the others are still removed when one fails.
int remove(const VolumeArgs& a) {
  runtime::VolumeStore vs;
  int rc = kExitOk;
  for (const auto& n : a.names) {
    try {
      vs.remove(n);
      std::cout << n << "\n";
    } catch (const Error& e) {
      if (a.force && e.kind() == ErrorKind::kNotFound) continue;
      std::cerr << "img2vm: " << e.what() << "\n";
      rc = kExitError;
    }
  }
  return rc;
}

int prune(const VolumeArgs& a, const Globals& g) {
  auto r = runtime::VolumeStore().prune(a.all);
  if (g.json) {
    std::cout << nlohmann::json{{"removed", r.removed}, {"bytes", r.bytes}}.dump() << "\n";
    return kExitOk;
  }
  if (!r.removed.empty()) {
    std::cout << "Deleted Volumes:\n";
    for (const auto& n : r.removed) std::cout << n << "\n";
    std::cout << "\n";
  }
  std::cout << "Total reclaimed space: " << human_size(r.bytes) << "\n";
  return kExitOk;
}

}  // namespace

void register_volume(CLI::App& app, Globals& g, Action* slot) {
  auto a = std::make_shared<VolumeArgs>();
  auto* vol = app.add_subcommand("volume", "Manage the volumes run -v NAME:/path uses");
  vol->require_subcommand(1);
  add_global_flags(*vol);
  auto sub = [&](const char* name, const char* help, std::function<int()> body) {
    auto* s = vol->add_subcommand(name, help);
    add_global_flags(*s);
    s->callback([slot, body] { *slot = body; });
    return s;
  };
  sub("create", "Create a volume (a random name when none is given)", [a] {
    return create(*a);
  })->add_option("name", a->name, "Volume name");
  auto* ls = sub("ls", "List volumes", [a, &g] { return list(*a, g); });
  ls->alias("list");
  ls->add_flag("-q,--quiet", a->quiet, "Only display volume names");
  sub("inspect", "Show volumes as JSON", [a] { return inspect(*a); })
      ->add_option("name", a->names, "Volume names")
      ->required();
  auto* rm = sub("rm", "Remove volumes", [a] { return remove(*a); });
  rm->alias("remove");
  rm->add_option("name", a->names, "Volume names")->required();
  rm->add_flag("-f,--force", a->force, "No error for volumes that do not exist");
  auto* pr = sub("prune", "Remove anonymous volumes no run uses (-a: every unused volume)",
                 [a, &g] { return prune(*a, g); });
  pr->add_flag("-a,--all", a->all, "Remove named volumes too");
  pr->add_flag("-f,--force", a->force, "Accepted for docker compatibility; there is no prompt");
}

}  // namespace img2vm::cli
