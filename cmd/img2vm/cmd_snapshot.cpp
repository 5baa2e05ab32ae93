// `img2vm snapshot create|ls|rm|prune`: snapshots of booted VMs in the store, which `img2vm run`
// resumes instead of booting (runtime/snapshots.hpp does the work; this file parses and prints).
#include <unistd.h>

#include <iostream>
#include <nlohmann/json.hpp>

#include "cli.hpp"
#include "commands.hpp"
#include "format.hpp"
#include "image_args.hpp"
#include "img2vm/base/error.hpp"
#include "img2vm/runtime/kernel.hpp"
#include "img2vm/runtime/snapshots.hpp"
#include "img2vm/vm/kvm_detect.hpp"
#include "run_options.hpp"

namespace img2vm::cli {

namespace {

struct SnapshotArgs : RootfsArgs {
  std::string image, kernel, platform, memory = "256M", timeout = "10m", network = "user";
  unsigned cpus = 1;
  std::vector<std::string> keys;
  bool all = false, force = false, quiet = false;
};

nlohmann::json info_json(const runtime::SnapshotInfo& s) {
  return {{"key", s.key},         {"image", s.image},           {"memory_mib", s.memory_mib},
          {"cpus", s.cpus},       {"network", s.network},       {"kernel_digest", s.kernel_digest},
          {"rootfs", s.rootfs},   {"created_at", s.created_at}, {"bytes", s.bytes},
          {"dir", s.dir.string()}};
}

int create(const SnapshotArgs& a, const Globals& g) {
  if (a.cpus < 1 || a.cpus > 64)
    throw Error(ErrorKind::kInvalidArgument, "--cpus must be between 1 and 64");
  if (a.network != "user" && a.network != "none" && a.network != "tap")
    throw Error(ErrorKind::kInvalidArgument,
                "--network " + a.network +
                    ": a snapshot is of a VM with the user network, a tap network or none (the "
                    "network's options are each run's: run --network tap:NAME,outbound=off "
                    "resumes a snapshot taken with tap)");
  vm::KvmInfo kvm = vm::detect_kvm();
  if (kvm.kind == vm::KvmKind::kUnavailable)
    throw Error(ErrorKind::kNotFound, "cannot run VMs here: " + kvm.detail);
  std::optional<runtime::GuestKernel> kernel = runtime::find_guest_kernel(a.kernel);
  if (!kernel) kernel = runtime::build_guest_kernel(false);
  registry::Store store;
  registry::Platform platform =
      a.platform.empty() ? registry::host_platform() : registry::Platform::parse(a.platform);
  auto src = resolve_image(store, a.image, platform, g.json);
  runtime::RootfsResult root = make_rootfs(store, *src, a, {}, !g.json && ::isatty(STDERR_FILENO));
  runtime::SnapshotInputs in{kernel->path, root.path, parse_memory_mib(a.memory),
                             a.cpus,       a.image,   {}};
  in.network = a.network == "user"  ? runtime::NetworkMode::kUser
               : a.network == "tap" ? runtime::NetworkMode::kTap
                                    : runtime::NetworkMode::kNone;
  runtime::MachineOptions mo;
  mo.console_out_fd = STDERR_FILENO;  // only a failing boot says anything
  mo.console_err_fd = STDERR_FILENO;
  runtime::SnapshotInfo s = runtime::create_snapshot(runtime::SnapshotStore(), in, std::move(mo),
                                                     parse_duration("--timeout", a.timeout));
  if (g.json)
    std::cout << info_json(s).dump() << "\n";
  else
    std::cout << s.key << "\n";
  return kExitOk;
}

int list(const SnapshotArgs& a, const Globals& g) {
  auto all = runtime::SnapshotStore().list();
  if (!g.json && !a.quiet)
    std::cout << "SNAPSHOT                          IMAGE                          MEMORY  CPUS  "
                 "SIZE      CREATED\n";
  for (const auto& s : all) {
    if (g.json) {
      std::cout << info_json(s).dump() << "\n";
    } else if (a.quiet) {
      std::cout << s.key << "\n";
    } else {
      auto pad = [](std::string t, size_t n) {
        if (t.size() < n) t.resize(n, ' ');
        return t;
      };
      std::cout << s.key << "  " << pad(s.image, 29) << "  "
                << pad(std::to_string(s.memory_mib) + "M", 6) << "  "
                << pad(std::to_string(s.cpus), 4) << "  " << pad(human_size(s.bytes), 8) << "  "
                << s.created_at << "\n";
    }
  }
  return kExitOk;
}

int remove(const SnapshotArgs& a) {
  runtime::SnapshotStore ss;
  int rc = kExitOk;
  for (const auto& k : a.keys) {
    try {
      std::cout << ss.remove(k).key << "\n";
    } catch (const Error& e) {
      if (a.force && e.kind() == ErrorKind::kNotFound) continue;
      std::cerr << "img2vm: " << e.what() << "\n";
      rc = kExitError;
    }
  }
  return rc;
}

int prune(const SnapshotArgs& a, const Globals& g) {
  auto r = runtime::SnapshotStore().prune(a.all);
  if (g.json) {
    std::cout << nlohmann::json{{"removed", r.removed}, {"bytes", r.bytes}}.dump() << "\n";
    return kExitOk;
  }
  if (!r.removed.empty()) {
    std::cout << "Deleted Snapshots:\n";
    for (const auto& k : r.removed) std::cout << k << "\n";
    std::cout << "\n";
  }
  std::cout << "Total reclaimed space: " << human_size(r.bytes) << "\n";
  return kExitOk;
}

}  // namespace

void register_snapshot(CLI::App& app, Globals& g, Action* slot) {
  auto a = std::make_shared<SnapshotArgs>();
  auto* snap = app.add_subcommand(
      "snapshot", "Manage snapshots of booted VMs, which run resumes instead of booting");
  snap->require_subcommand(1);
  add_global_flags(*snap);
  auto sub = [&](const char* name, const char* help, std::function<int()> body) {
    auto* s = snap->add_subcommand(name, help);
    add_global_flags(*s);
    s->callback([slot, body] { *slot = body; });
    return s;
  };
  auto* cr = sub("create",
                 "Boot IMAGE up to its init's snapshot point and store the VM there, for runs "
                 "with the same kernel, memory, vCPUs and network",
                 [a, &g] { return create(*a, g); });
  cr->add_option("image", a->image, "Image reference")->required();
  cr->add_option("--kernel", a->kernel,
                 "Guest kernel (vmlinux or bzImage); default: our cached build");
  cr->add_option("--cpus", a->cpus, "Number of vCPUs (default 1)");
  cr->add_option("-m,--memory", a->memory,
                 "Guest memory: 512M, 1G, or a number of MiB (default 256M)");
  cr->add_option("--network", a->network,
                 "The runs' network: user (the default, as for run), tap (no device is made "
                 "now: each run that resumes it sets its own up, as root) or none");
  cr->add_option("--platform", a->platform,
                 "os/arch[/variant] to select from a multi-platform image");
  cr->add_option("--size", a->size, "Root filesystem size (e.g. 2G); default: from the content");
  cr->add_option("--extra-space", a->extra_space,
                 "Free space in the root filesystem (default 16M)");
  cr->add_option("--timeout", a->timeout,
                 "How long the boot to the snapshot point may take (default 10m)");
  auto* ls = sub("ls", "List snapshots", [a, &g] { return list(*a, g); });
  ls->alias("list");
  ls->add_flag("-q,--quiet", a->quiet, "Only display keys");
  auto* rm =
      sub("rm", "Remove snapshots (by key or a unique prefix of one)", [a] { return remove(*a); });
  rm->alias("remove");
  rm->add_option("key", a->keys, "Snapshot keys")->required();
  rm->add_flag("-f,--force", a->force, "No error for snapshots that do not exist");
  auto* pr =
      sub("prune", "Remove snapshots whose root filesystem left the cache (-a: every snapshot)",
          [a, &g] { return prune(*a, g); });
  pr->add_flag("-a,--all", a->all, "Remove every snapshot");
  pr->add_flag("-f,--force", a->force, "Accepted for docker compatibility; there is no prompt");
}

}  // namespace img2vm::cli
