// `img2vm run [OPTIONS] IMAGE [CMD...]`: pull if needed, convert if needed (the rootfs cache),
// and boot the image in our own KVM runner (lib/vm), like `docker run`; the steps are the
// facade's (img2vm::runtime); this file parses, reports and handles signals. Once the rootfs
// is ready this process becomes img2vm-vmm (vmm_main.cpp), which runs the VM. With --network
// tap it sets the tap device and its rules up as root, starts img2vm-vmm as a child that gives
// up root before the guest runs, and undoes the host side when the child has ended. The
// workload's output is the VM's console on stdout; its exit code is ours. Failures of img2vm
// itself exit 125, as docker run does; the runner's own outcomes are 122-125 and 130
// (docs/cli.md).
#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <iostream>
#include <nlohmann/json.hpp>
#include <optional>

#include "attached_run.hpp"
#include "cli.hpp"
#include "commands.hpp"
#include "image_args.hpp"
#include "img2vm/base/digest.hpp"
#include "img2vm/base/error.hpp"
#include "img2vm/base/fd.hpp"
#include "img2vm/runtime/kernel.hpp"
#include "img2vm/runtime/machine.hpp"
#include "img2vm/runtime/mounts.hpp"
#include "img2vm/runtime/root_dir.hpp"
#include "img2vm/runtime/snapshots.hpp"
#include "img2vm/runtime/virtiofsd.hpp"
#include "img2vm/runtime/vmm.hpp"
#include "img2vm/runtime/vms.hpp"
#include "img2vm/vm/kvm_detect.hpp"
#include "img2vm/vm/machine.hpp"
#include "img2vm/vm/net_tap.hpp"
#include "img2vm/vm/port_forward.hpp"
#include "privileges.hpp"
#include "run_options.hpp"

namespace img2vm::cli {

namespace fs = std::filesystem;

namespace {

constexpr int kExitRunFailed = 125;  // img2vm itself failed (docker run's convention)

struct RunArgs : RootfsArgs {
  std::vector<std::string> words;  // IMAGE [CMD...], or with --rootfs CMD...
  std::string rootfs;              // --rootfs DIR
  bool read_only = false;          // --read-only
  RunRequest req;
  std::string entrypoint;
  bool entrypoint_set = false;
  std::string kernel, memory = "256M", timeout, stop_timeout = "10s", platform, keep,
                      log_level = "warn";
  unsigned cpus = 1;
  std::vector<std::string> disks;
  std::string network = "user";
  std::vector<std::string> publish, expose;
  std::vector<std::string> volumes, mounts, tmpfs;
  std::string virtiofsd;  // --virtiofsd PATH
  bool publish_all = false;
  bool rm = false, timings = false, verbose_boot = false, hugepages = false;
  bool detach = false;       // -d
  bool no_snapshot = false;  // --no-snapshot
  std::string name;          // --name (with -d)
};

// What a run needs once the image is resolved and converted.
struct PreparedRun {
  runtime::PreparedMachine machine;
  cli::AttachOptions attach;
  nlohmann::json summary;
  fs::path vmm;                      // img2vm-vmm
  std::string image;                 // what ps shows
  std::vector<std::string> command;  // the workload's command line, as far as known here
};

// --rootfs: the words are the command, and what belongs to an image has no meaning.
void check_rootfs_args(const RunArgs& a) {
  if (!a.words.empty() && looks_like_image(a.words[0]))
    throw Error(ErrorKind::kInvalidArgument,
                "--rootfs boots a directory, not an image: \"" + a.words[0] +
                    "\" looks like an image (with --rootfs the words after the options are the "
                    "command)");
  for (auto [flag, set] :
       {std::pair{"--keep", !a.keep.empty()}, std::pair{"--platform", !a.platform.empty()},
        std::pair{"--size", !a.size.empty()}, std::pair{"--extra-space", !a.extra_space.empty()}})
    if (set)
      throw Error(ErrorKind::kInvalidArgument,
                  std::string(flag) + ": not with --rootfs (no image is converted or copied)");
}

PreparedRun prepare_run(RunArgs& a, Globals& g) {
  PreparedRun p;
  LogLevel level = parse_log_level(a.log_level);
  if (g.verbose && level < LogLevel::kInfo) level = LogLevel::kInfo;
  auto log = [&](LogLevel l, const std::string& line) {
    if (l <= level) std::cerr << "img2vm: " << line << "\n";
  };
  if (!a.keep.empty() && a.rm)
    throw Error(ErrorKind::kInvalidArgument, "--rm and --keep contradict each other");
  if (a.cpus < 1 || a.cpus > 64)
    throw Error(ErrorKind::kInvalidArgument, "--cpus must be between 1 and 64");
  const bool dir_root = !a.rootfs.empty();
  const std::string ref = dir_root ? std::string() : a.words[0];
  a.req.cmd.assign(a.words.begin() + (dir_root ? 0 : 1), a.words.end());
  if (dir_root) check_rootfs_args(a);
  if (a.read_only && !dir_root)
    throw Error(ErrorKind::kInvalidArgument,
                "--read-only: only a --rootfs directory can be read-only (an image's disk cannot "
                "yet)");
  if (a.entrypoint_set) a.req.entrypoint = a.entrypoint;
  if (a.req.tty && !::isatty(STDIN_FILENO))
    throw Error(ErrorKind::kInvalidArgument, "-t: the input device is not a TTY");

  runtime::MachineOptions mo;
  mo.memory_mib = parse_memory_mib(a.memory);
  mo.cpus = a.cpus;
  mo.hugepages = a.hugepages;
  if (!a.timeout.empty()) mo.timeout = parse_duration("--timeout", a.timeout);
  p.attach.stop_timeout = parse_duration("--stop-timeout", a.stop_timeout);
  p.attach.level = level;
  p.attach.tty = a.req.tty;
  p.attach.say = ::isatty(STDERR_FILENO) && !g.json;
  p.attach.json = g.json;
  p.attach.timings = a.timings;
  mo.overrides = build_overrides(a.req, process_env());
  // A detached VM's signals come through its exec agent: its init does not poll for them.
  mo.overrides.agent_signals = a.detach;
  for (const auto& d : a.disks) {
    ExtraDisk e = parse_disk(d);
    mo.disks.push_back({e.path, e.read_only});
  }
  for (const auto& v : a.volumes) mo.mounts.push_back(runtime::parse_volume(v));
  for (const auto& m : a.mounts) mo.mounts.push_back(runtime::parse_mount(m));
  for (const auto& t : a.tmpfs) mo.mounts.push_back(runtime::parse_tmpfs(t));
  runtime::check_mounts(mo.mounts);
  for (const auto& m : mo.mounts)  // checked again when virtiofsd starts; now to fail early
    if (m.type == runtime::Mount::Type::kBind) runtime::share_source(m.source);
  const bool shares = dir_root || std::any_of(mo.mounts.begin(), mo.mounts.end(), [](auto& m) {
                        return m.type != runtime::Mount::Type::kTmpfs;
                      });
  // -d: the VM's monitor starts the virtiofsd, so that they live as long as the VM.
  mo.defer_shares = a.detach;
  if (!a.name.empty() && !a.detach)
    throw Error(ErrorKind::kUnsupported,
                "--name: only with -d for now (an attached run is not "
                "recorded as a VM yet)");
  if (a.detach && (a.req.tty || a.req.interactive))
    throw Error(ErrorKind::kUnsupported, "-d: not with -i or -t (no terminal or input is kept)");
  if (!a.name.empty()) {
    runtime::check_vm_name(a.name);
    runtime::VmStore().check_name_free(a.name);
  }
  if (shares) mo.virtiofsd = runtime::find_virtiofsd(a.virtiofsd);
  std::optional<runtime::RootDirectory> root_dir;
  if (dir_root) {
    root_dir = runtime::open_root_directory(a.rootfs, a.read_only);
    runtime::check_root_command(*root_dir, mo.overrides);
    if (!root_dir->config_file.empty())
      log(LogLevel::kInfo, "config: " + root_dir->config_file.string());
  }

  NetworkChoice net = parse_network(a.network);
  for (const auto& f : a.publish)
    for (auto& pf : vm::parse_port_forward(f)) mo.publish.push_back(std::move(pf));
  if (net.mode == NetworkChoice::Mode::kNone && (!mo.publish.empty() || a.publish_all))
    throw Error(ErrorKind::kInvalidArgument,
                "-p/-P: --network none has no network to publish ports on");
  runtime::parse_exposed_ports(a.expose, "--expose");  // checked now; used once the image is known
  if (a.detach && net.mode == NetworkChoice::Mode::kTap)
    throw Error(ErrorKind::kUnsupported, "-d: --network tap is not supported with -d yet");
  mo.network = net.mode == NetworkChoice::Mode::kUser  ? runtime::NetworkMode::kUser
               : net.mode == NetworkChoice::Mode::kTap ? runtime::NetworkMode::kTap
                                                       : runtime::NetworkMode::kNone;
  mo.outbound = net.outbound;
  mo.host_loopback = net.host_loopback;
  mo.tap_name = net.tap_name;
  mo.publish_all = a.publish_all;
  mo.expose = a.expose;

  // KVM and the VMM program first: no point pulling and converting for a VM that cannot start.
  vm::KvmInfo kvm = vm::detect_kvm();
  if (kvm.kind == vm::KvmKind::kUnavailable)
    throw Error(ErrorKind::kNotFound, "cannot run VMs here: " + kvm.detail);
  if (kvm.kind == vm::KvmKind::kPvm)
    log(LogLevel::kWarn,
        "warning: /dev/kvm is PVM, a software nested hypervisor (" + kvm.detail +
            "): a Linux guest boots very slowly or stalls here; use a host with hardware KVM");
  else
    log(LogLevel::kInfo, std::string("KVM: ") + vm::to_string(kvm.kind) + " (" + kvm.detail + ")");
  p.vmm = runtime::find_vmm_binary();

  std::optional<runtime::GuestKernel> kernel = runtime::find_guest_kernel(a.kernel);
  if (!kernel) {
    log(LogLevel::kWarn,
        "the guest kernel is not built yet; building it from linux-source-6.1 (once, a few "
        "minutes)");
    kernel = runtime::build_guest_kernel(false);
  }
  log(LogLevel::kInfo, "kernel: " + kernel->path.string() + " (" + kernel->source + ")");

  mo.kernel = kernel->path;
  mo.verbose_boot = a.verbose_boot;
  std::unique_ptr<registry::ImageSource> src;
  runtime::RootfsResult root;
  if (root_dir) {
    mo.root_dir = std::move(root_dir);
  } else {
    registry::Store store;
    registry::Platform platform =
        a.platform.empty() ? registry::host_platform() : registry::Platform::parse(a.platform);
    src = resolve_image(store, ref, platform, g.json);
    root = make_rootfs(store, *src, a, {}, !g.json && ::isatty(STDERR_FILENO));
    log(LogLevel::kInfo,
        "rootfs: " + root.path.string() + (root.cached ? " (cached)" : " (converted)"));
    mo.rootfs = root.path;
    mo.keep = a.keep;
    mo.image_config_json = src->config_bytes();
    p.image = ref;
    auto cfg = nlohmann::json::parse(src->config_bytes(), nullptr, false);
    const nlohmann::json* c = cfg.is_object() && cfg.contains("config") ? &cfg["config"] : nullptr;
    auto words = [&](const char* k) {
      std::vector<std::string> w;
      if (c && c->is_object() && c->contains(k) && (*c)[k].is_array())
        for (const auto& x : (*c)[k])
          if (x.is_string()) w.push_back(x.get<std::string>());
      return w;
    };
    p.command = a.entrypoint_set ? (a.entrypoint.empty() ? std::vector<std::string>()
                                                         : std::vector<std::string>{a.entrypoint})
                                 : words("Entrypoint");
    std::vector<std::string> cmd =
        a.req.cmd.empty() && !a.entrypoint_set ? words("Cmd") : a.req.cmd;
    p.command.insert(p.command.end(), cmd.begin(), cmd.end());
  }
  if (p.image.empty()) {
    p.image = a.rootfs;
    p.command = a.req.cmd;
  }
  // The stored snapshot this run resumes (img2vm snapshot create), when one fits; why others of
  // its image do not, at the log's levels.
  std::optional<runtime::SnapshotInfo> snap;
  if (src && !a.no_snapshot) {
    runtime::SnapshotChoice c = runtime::choose_snapshot(runtime::SnapshotStore(), mo, ref);
    for (const std::string& m : c.mismatched) log(LogLevel::kWarn, m);
    if (!c.skipped.empty()) log(LogLevel::kInfo, c.skipped);
    snap = std::move(c.snapshot);
  }
  if (snap) {
    mo.snapshot = snap->dir;
    log(LogLevel::kInfo, "resuming snapshot " + snap->key + " (" + snap->dir.string() + ")");
  }
  mo.console_out_fd = STDOUT_FILENO;
  mo.console_err_fd = STDERR_FILENO;
  mo.console_in_fd = (a.req.interactive || a.req.tty) ? STDIN_FILENO : -1;
  // With --network tap the host side is set up here, as root; the VM runs in a child given the
  // device's descriptor, which gives up root before the guest runs (run_tap_vmm).
  p.machine = runtime::build_machine(std::move(mo));
  for (const auto& v : p.machine.volumes)
    log(LogLevel::kInfo, "volume " + v.volume.name + ": " + v.volume.mountpoint.string() +
                             (v.copied ? " (filled from the image)" : ""));
  p.attach.ports_chosen = p.machine.ports_chosen;
  if (src)
    p.summary = {{"image", src->name()},
                 {"manifest_digest", src->manifest_digest().str()},
                 {"platform", src->platform().str()},
                 {"rootfs", root.path.string()},
                 {"rootfs_cached", root.cached}};
  else
    p.summary = {
        {"root_dir", (p.machine.shares.empty() ? p.machine.deferred_shares.back().options.source
                                               : p.machine.shares.back().source())
                         .string()},
        {"read_only", a.read_only}};
  if (snap) p.summary["snapshot"] = snap->key;
  p.summary.update({{"kernel", kernel->path.string()},
                    {"kvm", vm::to_string(kvm.kind)},
                    {"network", net.mode == NetworkChoice::Mode::kUser  ? "user"
                                : net.mode == NetworkChoice::Mode::kTap ? "tap"
                                                                        : "none"}});
  if (p.machine.tap) {
    p.attach.run_as = unprivileged_identity();
    const vm::TapNetInfo& ti = p.machine.tap->info();
    p.summary["tap"] = {{"device", ti.device},
                        {"managed", ti.managed},
                        {"host_ip", ti.host_ip},
                        {"guest_ip", ti.guest_ip}};
    log(LogLevel::kInfo, "network: tap device " + ti.device + (ti.managed ? "" : " (existing)") +
                             ", guest " + ti.guest_ip + "/" + std::to_string(ti.prefix_length) +
                             " via " + ti.host_ip);
  }
  if (!a.keep.empty()) p.summary["kept"] = fs::absolute(a.keep).string();
  return p;  // the store, the image source and their files are released here
}

// Replaces this process with img2vm-vmm running `p`: the VMM process maps only the runner's
// code and libraries (no registry, TLS, archive or ext4 code next to a guest), and is what the
// VM's memory and time are charged to. Returns (false) only when the spec has no JSON form: a
// path that is not UTF-8; the VM then runs in this process.
bool exec_vmm(PreparedRun& p) {
  const fs::path& vmm = p.vmm;
  std::string text;
  try {
    text = attach_spec(p.machine.config, p.attach, p.summary).dump();
  } catch (const nlohmann::json::exception& e) {
    if (p.attach.level >= LogLevel::kDebug)
      std::cerr << "img2vm: running the VM in this process: " << e.what() << "\n";
    return false;
  }
  UniqueFd spec = runtime::sealed_memfd("img2vm-vm-spec", text);
  // What the spec refers to by descriptor stays open in img2vm-vmm, and so do the volumes'
  // locks. The virtiofsd processes become its children, ended by their parent-death signal when
  // it exits.
  std::vector<int> keep = {spec.get(), p.machine.overrides_disk.get(), p.machine.initramfs.get()};
  for (const auto& share : p.machine.shares) keep.push_back(share.socket_fd());
  for (const auto& v : p.machine.volumes) keep.push_back(v.lock.get());  // held while the VM runs
  for (int fd : keep)
    if (fd >= 0 && ::fcntl(fd, F_SETFD, 0) != 0) throw_errno("fcntl");
  std::cout.flush();
  std::cerr.flush();
  std::fflush(nullptr);
  std::string fd_arg = std::to_string(spec.get());
  const char* argv[] = {"img2vm-vmm", "--spec-fd", fd_arg.c_str(), nullptr};
  ::execv(vmm.c_str(), const_cast<char* const*>(argv));
  throw_errno("cannot start the VMM " + vmm.string());
}

// The spec img2vm-vmm gets for `p`; Error naming `flag` when the VM has no JSON form.
std::string spec_text(const PreparedRun& p, const char* flag) {
  try {
    return attach_spec(p.machine.config, p.attach, p.summary).dump();
  } catch (const nlohmann::json::exception& e) {
    throw Error(ErrorKind::kInvalidArgument,
                std::string(flag) + ": the VM cannot be handed to img2vm-vmm: " + e.what());
  }
}

// --network tap: the host side (device, addresses, nftables rules, reserved ports) is set up in
// this process, as root. The VM runs in img2vm-vmm, a child given the device's descriptor
// (NicConfig::tap), which gives up root and every capability before the guest runs
// (attach.run_as). This process keeps nothing next to the guest: it waits for the child, passes
// on the signals sent to it, and undoes the host side afterwards (the tap backend's
// destructor, once run_image returns). Returns the child's exit code.
int run_tap_vmm(PreparedRun& p) {
  const std::string text = spec_text(p, "--network tap");

  // Blocked before the child exists, so that nothing sent meanwhile is lost; the child starts
  // with the mask this process had.
  sigset_t wait_set = relayed_signals(), old_mask;
  sigaddset(&wait_set, SIGCHLD);
  struct sigaction dfl = {};
  struct sigaction old_chld = {};
  dfl.sa_handler = SIG_DFL;
  ::sigaction(SIGCHLD, &dfl, &old_chld);  // not SIG_IGN: the child must stay waitable
  ::pthread_sigmask(SIG_BLOCK, &wait_set, &old_mask);
  auto restore = [&] {
    struct timespec zero {};
    sigset_t relayed = relayed_signals();
    while (::sigtimedwait(&relayed, nullptr, &zero) > 0) {
    }
    ::pthread_sigmask(SIG_SETMASK, &old_mask, nullptr);
    ::sigaction(SIGCHLD, &old_chld, nullptr);
  };
  std::cout.flush();
  std::cerr.flush();
  std::fflush(nullptr);
  std::optional<runtime::VmmProcess> child;
  try {
    runtime::VmmChildOptions co;
    co.vmm = p.vmm;
    co.sigmask = old_mask;
    if (p.attach.exit_fd >= 0) co.pass_fds.push_back(p.attach.exit_fd);
    child.emplace(runtime::VmmProcess::start(text, co));
  } catch (...) {
    restore();
    throw;
  }
  std::optional<runtime::ExitStatus> status;
  while (!(status = child->try_wait())) {
    siginfo_t si{};
    int sig = ::sigwaitinfo(&wait_set, &si);
    if (sig <= 0 || sig == SIGCHLD) continue;
    // What the terminal sends (Ctrl-C, a resize) reaches the child itself, in the same process
    // group; what a process sends to this one is passed on, as sudo does.
    if ((si.si_code == SI_USER || si.si_code == SI_QUEUE) && si.si_pid != child->pid())
      child->signal(sig);
  }
  restore();
  if (status->exited) return status->code;
  std::cerr << "img2vm: the VMM (img2vm-vmm) was killed by signal " << status->signal << " ("
            << ::strsignal(status->signal) << ")\n";
  return kExitRunFailed;
}

// -d: the VM recorded in the store and started by its monitor, a daemon
// (runtime::start_detached); prints the id once the workload has started.
int run_detached(PreparedRun& p, const RunArgs& a) {
  const std::string text = spec_text(p, "-d");
  runtime::VmCreate c;
  c.name = a.name;
  c.image = p.image;
  c.command = p.command;
  c.auto_remove = a.rm;
  c.stop_timeout = p.attach.stop_timeout;
  c.vmm_program = p.vmm.string();
  runtime::DetachedOptions o;
  o.monitor = p.vmm;
  // The memfds the spec names as /proc/self/fd/N, the volume locks, the shares to start.
  o = runtime::detached_options(p.machine, o);
  runtime::VmStore store;
  std::cout.flush();
  std::cerr.flush();
  runtime::VmRecord r = runtime::start_detached(store, c, text, o);
  std::cout << r.id << std::endl;
  return kExitOk;
}

// Attached with --name: the VM is recorded in the store as running in this process (which
// becomes img2vm-vmm, or is its parent with --network tap); the VMM writes how it ended to the
// record's exit.json (AttachOptions::exit_fd), read by ps, wait and inspect once it is gone.
// Returns the exit file, open (not close-on-exec: it goes to img2vm-vmm).
UniqueFd record_attached(PreparedRun& p, const RunArgs& a) {
  runtime::VmCreate c;
  c.name = a.name;
  c.image = p.image;
  c.command = p.command;
  c.detached = false;
  c.auto_remove = a.rm;
  c.stop_timeout = p.attach.stop_timeout;
  c.vmm_program = p.vmm.string();
  runtime::VmStore store;
  runtime::VmRecord r = store.create(c, spec_text(p, "--name"));
  UniqueFd exit_file = open_file(store.exit_file(r.id), O_WRONLY | O_CREAT | O_TRUNC, 0600);
  if (::fcntl(exit_file.get(), F_SETFD, 0) != 0) throw_errno("fcntl");
  const runtime::ProcessRef me = runtime::ProcessRef::of(::getpid());
  store.update(r.id, [&](runtime::VmRecord& s) {
    s.status = runtime::VmStatus::kRunning;
    s.monitor = s.vmm = me;
    s.started = runtime::now_rfc3339_nano();
  });
  p.attach.exit_fd = exit_file.get();
  // `exec`, `stop` and `kill` reach its workload through the guest's agent on this socket.
  p.machine.config.vsock = vm::VsockConfig{runtime::kDetachedGuestCid, r.vsock_socket};
  return exit_file;
}

int run_image(RunArgs& a, Globals& g) {
  PreparedRun p = prepare_run(a, g);
  if (a.detach) return run_detached(p, a);
  UniqueFd exit_file;
  if (!a.name.empty()) exit_file = record_attached(p, a);
  if (p.machine.tap) return run_tap_vmm(p);
  if (exec_vmm(p)) return kExitRunFailed;  // not reached: exec_vmm execs or throws
  return run_attached(std::move(p.machine.config), p.attach, std::move(p.summary));
}

[[noreturn]] void unsupported(const std::string& flag, const std::string& why) {
  throw CLI::ValidationError(flag, why);
}

}  // namespace

void register_run(CLI::App& app, Globals& g, Action* slot) {
  auto a = std::make_shared<RunArgs>();
  auto* sub =
      app.add_subcommand("run", "Boot an image as a microVM and run its command, like docker run");
  // No fallthrough to the global flags (add_global_flags): the words after the image must stay
  // here, not go to the parent. So run takes --json and --verbose itself (docker's -v is
  // --volume).
  sub->add_flag("--json", g.json, "Machine-readable summary on stderr when the VM ends");
  sub->add_flag("--verbose", g.verbose, "More detail on stderr (as --log-level info)");
  // docker's -h is --hostname; help stays available as --help.
  sub->set_help_flag("--help", "Print this help message and exit");
  // Everything after the image belongs to the command, options included (docker's rule).
  sub->prefix_command();
  sub->footer(
      "Usage: img2vm run [OPTIONS] IMAGE [COMMAND [ARG...]]\n"
      "       img2vm run [OPTIONS] --rootfs DIR [COMMAND [ARG...]]\n"
      "IMAGE is a registry reference (pulled when missing), oci:DIR[:TAG] or "
      "docker-archive:FILE[:REF].\n"
      "Exit code: the workload's; 122 the guest init failed, 123 the guest kernel died, 124 "
      "--timeout,\n"
      "125 img2vm could not run the VM, 130 stopped from the host.");

  sub->add_option("-e,--env", a->req.env,
                  "Set an environment variable (KEY=VALUE, or KEY to pass the host's)")
      ->allow_extra_args(false);
  sub->add_option("--env-file", a->req.env_files,
                  "Read environment variables from a file (docker's format)")
      ->allow_extra_args(false);
  sub->add_option("--entrypoint", a->entrypoint, "Override the image's ENTRYPOINT (\"\" clears it)")
      ->each([a](const std::string&) { a->entrypoint_set = true; });
  sub->add_option("-w,--workdir", a->req.workdir, "Working directory inside the guest");
  sub->add_option("-u,--user", a->req.user, "User: name, uid, name:group or uid:gid");
  sub->add_option("-h,--hostname", a->req.hostname, "Guest host name");
  sub->add_option("--dns", a->req.dns, "Nameserver for a generated /etc/resolv.conf")
      ->allow_extra_args(false);
  sub->add_flag("-i,--interactive", a->req.interactive, "Connect stdin to the workload");
  sub->add_flag("-t,--tty", a->req.tty, "Give the workload a terminal (host terminal in raw mode)");
  sub->add_flag("--rm", a->rm,
                "Discard the VM's disk writes at exit (always the case without --keep); also "
                "remove the VM's record (-d, --name) when it ends");
  sub->add_option("--rootfs", a->rootfs,
                  "Boot the host directory DIR (through virtio-fs) instead of an image; the words "
                  "after the options are the command")
      ->type_name("DIR");
  sub->add_flag("--read-only", a->read_only, "With --rootfs: the root file system is read-only");
  sub->add_option("--keep", a->keep,
                  "Run on a copy of the rootfs written to FILE, which stays afterwards");
  sub->add_option("--kernel", a->kernel,
                  "Guest kernel (vmlinux or bzImage); default: our cached build");
  sub->add_option("--cpus", a->cpus, "Number of vCPUs (default 1)");
  sub->add_option("-m,--memory", a->memory,
                  "Guest memory: 512M, 1G, or a number of MiB (default 256M)");
  sub->add_flag("--hugepages", a->hugepages,
                "Back guest memory with 2 MiB huge pages (from /proc/sys/vm/nr_hugepages)");
  sub->add_option("--disk", a->disks, "Attach FILE[:ro] as an extra virtio disk (/dev/vdb, ...)")
      ->allow_extra_args(false);
  sub->add_option("--timeout", a->timeout, "Stop the VM after this long (e.g. 30s, 5m); exit 124");
  sub->add_option("--stop-timeout", a->stop_timeout,
                  "After a stop request, how long the workload gets (default 10s)");
  sub->add_option("--platform", a->platform,
                  "os/arch[/variant] to select from a multi-platform image");
  sub->add_option("--size", a->size, "Root filesystem size (e.g. 2G); default: from the content");
  sub->add_option("--extra-space", a->extra_space,
                  "Free space in the root filesystem (default 16M)");
  sub->add_flag("--no-snapshot", a->no_snapshot,
                "Boot even when a snapshot of this image and shape is stored (img2vm snapshot)");
  sub->add_flag("--timings", a->timings, "Print VMM setup, kernel boot, init and time to exec");
  sub->add_flag("--verbose-boot", a->verbose_boot, "Show the guest kernel's boot messages");
  sub->add_option("--log-level", a->log_level, "error, warn (default), info or debug");
  // docker flags that img2vm does not offer (yet): a clear refusal rather than "unexpected".
  sub->add_option(
      "--network,--net", a->network,
      "user[:outbound=on|off,host_loopback=on|off] (default: user, rootless), none, tap[=NAME]");
  sub->add_option("-p,--publish", a->publish,
                  "Publish a guest port: [HOSTIP:][HOSTPORT:]GUESTPORT[/tcp|/udp]")
      ->allow_extra_args(false);
  sub->add_flag("-P,--publish-all", a->publish_all,
                "Publish every exposed port on a free host port");
  sub->add_option("--expose", a->expose, "Expose a port or range (PORT[-PORT][/PROTO]) for -P")
      ->allow_extra_args(false);
  sub->add_option("-v,--volume", a->volumes,
                  "Share a host directory or a volume: HOST:GUEST[:ro|rw] (HOST absolute and "
                  "existing), NAME:GUEST[:ro|rw|nocopy], or GUEST (an anonymous volume)")
      ->allow_extra_args(false);
  sub->add_option("--mount", a->mounts,
                  "type=bind,source=HOST,target=GUEST[,readonly], "
                  "type=volume[,source=NAME],target=GUEST[,readonly][,volume-nocopy] or "
                  "type=tmpfs,target=GUEST[,tmpfs-size=S][,tmpfs-mode=M]")
      ->allow_extra_args(false);
  sub->add_option("--tmpfs", a->tmpfs, "Mount a tmpfs: GUEST[:size=S,mode=M,ro]")
      ->allow_extra_args(false);
  sub->add_option("--virtiofsd", a->virtiofsd,
                  "The virtiofsd serving -v, --mount and --rootfs directories (default: "
                  "$IMG2VM_VIRTIOFSD, else /usr/lib/qemu/virtiofsd or /usr/libexec/virtiofsd)")
      ->type_name("PATH");
  sub->add_option("--name", a->name,
                  "The VM's name (unique; -d: generated when not given); a named attached run "
                  "stays in ps -a until rm (with --rm: until it ends)");
  sub->add_flag("-d,--detach", a->detach,
                "Run the VM in the background and print its id once the workload has started "
                "(img2vm ps, logs, stop, kill, wait, rm)");
  sub->add_flag_function("--privileged", [](int64_t) {
    unsupported("--privileged",
                "the guest is already root in its own VM; there is nothing to grant");
  });

  sub->callback([a, sub, &g, slot] {
    a->words = sub->remaining();
    *slot = [a, &g] {
      if (a->words.empty() && a->rootfs.empty()) {
        std::cerr << "img2vm: run: no image given (img2vm run [OPTIONS] IMAGE [COMMAND...])\n";
        return kExitUsage;
      }
      // prefix_command() hands everything from the first unknown word on to us, so an unknown
      // option before the image lands here.
      if (!a->words.empty() && a->words[0].size() > 1 && a->words[0][0] == '-') {
        std::cerr << "img2vm: run: unknown option " << a->words[0]
                  << " (see 'img2vm run --help')\n";
        return kExitUsage;
      }
      try {
        return run_image(*a, g);
      } catch (const Error& e) {
        std::cerr << "img2vm: " << e.what() << "\n";
        return kExitRunFailed;
      } catch (const std::exception& e) {
        std::cerr << "img2vm: internal error: " << e.what() << "\n";
        return kExitRunFailed;
      }
    };
  });
}

}  // namespace img2vm::cli
