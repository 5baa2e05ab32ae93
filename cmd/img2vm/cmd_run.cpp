// `img2vm run [OPTIONS] IMAGE [CMD...]`: pull if needed, convert if needed (the rootfs cache),
// and boot the image in our own KVM runner (lib/vm), like `docker run`: once the rootfs is ready
// this process becomes img2vm-vmm (vmm_main.cpp), which runs the VM. With --network tap it sets
// the tap device and its rules up as root, starts img2vm-vmm as a child that gives up root before
// the guest runs, and undoes the host side when the child has ended. The workload's output is
// the VM's console on stdout; its exit code is ours. Failures of img2vm itself exit 125, as
// docker run does; the runner's own outcomes are 122-125 and 130 (docs/cli.md).
#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <nlohmann/json.hpp>

#include "attached_run.hpp"
#include "cli.hpp"
#include "commands.hpp"
#include "guest_kernel.hpp"
#include "image_input.hpp"
#include "img2vm/base/error.hpp"
#include "img2vm/base/fd.hpp"
#include "img2vm/guestabi/cmdline.hpp"
#include "img2vm/guestabi/error.hpp"
#include "img2vm/guestabi/overrides_disk.hpp"
#include "img2vm/vm/disk_view.hpp"
#include "img2vm/vm/kvm_detect.hpp"
#include "img2vm/vm/machine.hpp"
#include "img2vm/vm/net_slirp.hpp"
#include "img2vm/vm/net_tap.hpp"
#include "img2vm/vm/port_forward.hpp"
#include "privileges.hpp"
#include "run_options.hpp"

namespace img2vm::cli {

namespace fs = std::filesystem;

namespace {

constexpr int kExitRunFailed = 125;  // img2vm itself failed (docker run's convention)

struct RunArgs : RootfsArgs {
  std::vector<std::string> words;  // IMAGE [CMD...]
  RunRequest req;
  std::string entrypoint;
  bool entrypoint_set = false;
  std::string kernel, memory = "256M", timeout, stop_timeout = "10s", platform, keep, log_level = "warn";
  unsigned cpus = 1;
  std::vector<std::string> disks;
  std::string network = "user";
  std::vector<std::string> publish, expose;
  bool publish_all = false;
  bool rm = false, timings = false, verbose_boot = false, hugepages = false;
};

// -P: every port the image exposes (and --expose adds) on a free host port of every
// interface, unless -p already publishes that guest port and protocol.
void add_exposed_ports(std::vector<vm::PortForward>& forwards, const registry::ImageSource& src,
                       const std::vector<std::string>& expose) {
  std::vector<std::string> specs;
  auto config = nlohmann::json::parse(src.config_bytes(), nullptr, false);
  if (config.is_object() && config.contains("config") && config["config"].is_object()) {
    const auto& c = config["config"];
    if (c.contains("ExposedPorts") && c["ExposedPorts"].is_object())
      for (const auto& [k, v] : c["ExposedPorts"].items()) specs.push_back(k);
  }
  std::vector<std::string> ports = parse_exposed_ports(specs, "the image's ExposedPorts");
  for (const auto& p : parse_exposed_ports(expose, "--expose"))
    if (std::find(ports.begin(), ports.end(), p) == ports.end()) ports.push_back(p);
  for (const auto& p : ports) {
    vm::PortForward f;
    f.guest_port = static_cast<uint16_t>(std::stoul(p.substr(0, p.find('/'))));
    f.protocol = p.substr(p.find('/') + 1) == "udp" ? vm::PortProtocol::kUdp : vm::PortProtocol::kTcp;
    bool taken = std::any_of(forwards.begin(), forwards.end(), [&](const vm::PortForward& x) {
      return x.guest_port == f.guest_port && x.protocol == f.protocol;
    });
    if (!taken) forwards.push_back(f);
  }
}

// Where img2vm-vmm is: $IMG2VM_VMM, the install's libexec directory, or beside this program
// (the build tree).
fs::path vmm_binary() {
  if (const char* e = std::getenv("IMG2VM_VMM"); e && *e) {
    if (!fs::is_regular_file(e)) throw Error(ErrorKind::kNotFound, std::string("the VMM ") + e + " (from IMG2VM_VMM) does not exist");
    return e;
  }
  std::error_code ec;
  fs::path self = fs::read_symlink("/proc/self/exe", ec);
  for (const fs::path& p : {fs::path(IMG2VM_INSTALL_LIBEXECDIR) / "img2vm-vmm", ec ? fs::path() : self.parent_path() / "img2vm-vmm"})
    if (!p.empty() && fs::is_regular_file(p)) return p;
  throw Error(ErrorKind::kNotFound, "the VMM program (img2vm-vmm) is missing: build the img2vm-vmm target or set IMG2VM_VMM");
}

// A read-only, sealed in-memory file holding `bytes`; the guest reads it as a disk through
// /proc/self/fd/N (no temporary file to clean up, in this process or the VMM it execs).
UniqueFd sealed_memfd(const char* name, const std::string& bytes) {
  UniqueFd fd(::memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING));
  if (!fd) throw_errno("memfd_create");
  write_all(fd.get(), bytes, name);
  if (::fcntl(fd.get(), F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_SEAL) != 0) throw_errno("sealing a memfd");
  return fd;
}

// What a run needs once the image is resolved and converted.
struct PreparedRun {
  vm::MachineConfig mc;
  cli::AttachOptions attach;
  nlohmann::json summary;
  UniqueFd overrides;  // the overrides disk, when they are too long for the command line
  std::shared_ptr<vm::TapBackend> tap;  // --network tap: the host side, undone when this goes
  fs::path vmm;                         // img2vm-vmm
};

PreparedRun prepare_run(RunArgs& a, Globals& g) {
  PreparedRun p;
  LogLevel level = parse_log_level(a.log_level);
  if (g.verbose && level < LogLevel::kInfo) level = LogLevel::kInfo;
  auto log = [&](LogLevel l, const std::string& line) {
    if (l <= level) std::cerr << "img2vm: " << line << "\n";
  };
  if (!a.keep.empty() && a.rm) throw Error(ErrorKind::kInvalidArgument, "--rm and --keep contradict each other");
  if (a.cpus < 1 || a.cpus > 64) throw Error(ErrorKind::kInvalidArgument, "--cpus must be between 1 and 64");
  const std::string& ref = a.words[0];
  a.req.cmd.assign(a.words.begin() + 1, a.words.end());
  if (a.entrypoint_set) a.req.entrypoint = a.entrypoint;
  if (a.req.tty && !::isatty(STDIN_FILENO)) throw Error(ErrorKind::kInvalidArgument, "-t: the input device is not a TTY");

  vm::MachineConfig& mc = p.mc;
  mc.memory_mib = parse_memory_mib(a.memory);
  mc.vcpus = a.cpus;
  mc.hugepages = a.hugepages;
  if (!a.timeout.empty()) mc.timeout = parse_duration("--timeout", a.timeout);
  p.attach.stop_timeout = parse_duration("--stop-timeout", a.stop_timeout);
  p.attach.level = level;
  p.attach.tty = a.req.tty;
  p.attach.say = ::isatty(STDERR_FILENO) && !g.json;
  p.attach.json = g.json;
  p.attach.timings = a.timings;
  guestabi::RunOverrides overrides = build_overrides(a.req, process_env());
  std::vector<ExtraDisk> extra;
  for (const auto& d : a.disks) extra.push_back(parse_disk(d));

  // The network: user-mode (rootless) by default, as docker's default bridge: the guest is
  // 10.0.2.15/24 behind 10.0.2.2, with DNS at 10.0.2.3 (vm/net_slirp.hpp).
  NetworkChoice net = parse_network(a.network);
  std::vector<vm::PortForward> forwards;
  for (const auto& f : a.publish)
    for (auto& pf : vm::parse_port_forward(f)) forwards.push_back(std::move(pf));
  if (net.mode == NetworkChoice::Mode::kNone && (!forwards.empty() || a.publish_all))
    throw Error(ErrorKind::kInvalidArgument, "-p/-P: --network none has no network to publish ports on");
  parse_exposed_ports(a.expose, "--expose");  // checked now; used once the image is known
  if (net.mode == NetworkChoice::Mode::kUser) {
    guestabi::NetConfig n;
    n.interface = "eth0";
    n.address = std::string(vm::usernet::kGuest);
    n.prefix = vm::usernet::kPrefixLength;
    n.gateway = std::string(vm::usernet::kGateway);
    overrides.net = n;  // the MTU comes from the device (VIRTIO_NET_F_MTU)
    if (overrides.dns.empty()) overrides.dns = {std::string(vm::usernet::kDns)};
  }

  // KVM and the VMM program first: no point pulling and converting for a VM that cannot start.
  vm::KvmInfo kvm = vm::detect_kvm();
  if (kvm.kind == vm::KvmKind::kUnavailable)
    throw Error(ErrorKind::kNotFound, "cannot run VMs here: " + kvm.detail);
  if (kvm.kind == vm::KvmKind::kPvm)
    log(LogLevel::kWarn, "warning: /dev/kvm is PVM, a software nested hypervisor (" + kvm.detail +
                             "): a Linux guest boots very slowly or stalls here; use a host with hardware KVM");
  else
    log(LogLevel::kInfo, std::string("KVM: ") + vm::to_string(kvm.kind) + " (" + kvm.detail + ")");
  p.vmm = vmm_binary();

  std::optional<GuestKernel> kernel = find_guest_kernel(a.kernel);
  if (!kernel) {
    log(LogLevel::kWarn, "the guest kernel is not built yet; building it from linux-source-6.1 (once, a few minutes)");
    kernel = build_guest_kernel(false);
  }
  log(LogLevel::kInfo, "kernel: " + kernel->path.string() + " (" + kernel->source + ")");

  registry::Store store;
  registry::Platform platform = a.platform.empty() ? registry::host_platform() : registry::Platform::parse(a.platform);
  auto src = resolve_image(store, ref, platform, g.json);
  RootfsResult root = make_rootfs(store, *src, a, {}, !g.json && ::isatty(STDERR_FILENO));
  log(LogLevel::kInfo, "rootfs: " + root.path.string() + (root.cached ? " (cached)" : " (converted)"));
  if (a.publish_all) add_exposed_ports(forwards, *src, a.expose);
  p.attach.ports_chosen =
      std::any_of(forwards.begin(), forwards.end(), [](const vm::PortForward& f) { return f.host_port == 0; });
  if (net.mode == NetworkChoice::Mode::kUser) {
    mc.net.emplace();
    mc.net->user.outbound = net.outbound;
    mc.net->user.host_loopback = net.host_loopback;
    mc.net->user.forwards = forwards;
  }
  p.summary = {{"image", src->name()},
               {"manifest_digest", src->manifest_digest().str()},
               {"platform", src->platform().str()},
               {"rootfs", root.path.string()},
               {"rootfs_cached", root.cached},
               {"kernel", kernel->path.string()},
               {"kvm", vm::to_string(kvm.kind)},
               {"network", net.mode == NetworkChoice::Mode::kUser  ? "user"
                           : net.mode == NetworkChoice::Mode::kTap ? "tap"
                                                                   : "none"}};
  // The tap network: a device of the VM's own on the host, its host side set up now (it needs
  // CAP_NET_ADMIN) and undone when the run ends; the guest gets the address chosen for it.
  // This process keeps that setup; the VM runs in a child given the device's descriptor, which
  // gives up root before the guest runs (run_tap_vmm).
  if (net.mode == NetworkChoice::Mode::kTap) {
    vm::TapNetConfig tc;
    tc.name = net.tap_name;
    tc.outbound = net.outbound;
    tc.forwards = forwards;
    mc.net.emplace();
    tc.guest_mac = mc.net->mac;
    p.tap = std::make_shared<vm::TapBackend>(tc, mc.net->mtu);
    mc.net->tap = vm::TapFdConfig{p.tap->device_fd(), p.tap->published()};
    p.attach.run_as = unprivileged_identity();
    const vm::TapNetInfo& ti = p.tap->info();
    guestabi::NetConfig n;
    n.interface = "eth0";
    n.address = ti.guest_ip;
    n.prefix = ti.prefix_length;
    n.gateway = ti.host_ip;
    overrides.net = n;
    if (overrides.dns.empty()) {
      std::string resolv;
      try {
        resolv = read_file("/etc/resolv.conf");
      } catch (const Error&) {  // no resolv.conf: docker's fallback resolvers
      }
      overrides.dns = tap_guest_dns(resolv);
    }
    p.summary["tap"] = {{"device", ti.device}, {"managed", ti.managed}, {"host_ip", ti.host_ip}, {"guest_ip", ti.guest_ip}};
    log(LogLevel::kInfo, "network: tap device " + ti.device + (ti.managed ? "" : " (existing)") + ", guest " + ti.guest_ip +
                             "/" + std::to_string(ti.prefix_length) + " via " + ti.host_ip);
  }

  // The root disk: a private copy-on-write view of the cached rootfs, or with --keep a copy of
  // it that the run writes and that stays.
  vm::DiskConfig rootdisk;
  rootdisk.id = "img2vm-root";
  if (!a.keep.empty()) {
    vm::clone_file(root.path, a.keep);
    rootdisk.path = fs::absolute(a.keep);
    rootdisk.mode = vm::DiskMode::kReadWrite;
    p.summary["kept"] = rootdisk.path.string();
  } else {
    rootdisk.path = root.path;
    rootdisk.mode = vm::DiskMode::kCopyOnWrite;
  }
  mc.disks.push_back(rootdisk);
  for (size_t i = 0; i < extra.size(); ++i) {
    vm::DiskConfig d;
    d.path = fs::absolute(extra[i].path);
    d.mode = extra[i].read_only ? vm::DiskMode::kReadOnly : vm::DiskMode::kReadWrite;
    mc.disks.push_back(d);
  }

  // The overrides: inline when short, else on a raw block device after the other disks.
  std::string param;
  try {
    param = guestabi::run_overrides_kernel_param(overrides);
    if (param.size() > kInlineOverridesMax) {
      if (mc.disks.size() >= 26) throw Error(ErrorKind::kLimit, "too many disks");
      p.overrides = sealed_memfd("img2vm-overrides", guestabi::encode_overrides_disk(overrides));
      vm::DiskConfig d;
      d.path = "/proc/self/fd/" + std::to_string(p.overrides.get());
      d.mode = vm::DiskMode::kReadOnly;
      d.id = "img2vm-overrides";
      param =
          guestabi::run_overrides_disk_param(std::string("/dev/vd") + char('a' + mc.disks.size()));
      mc.disks.push_back(d);
    }
  } catch (const guestabi::Error& e) {
    throw Error(ErrorKind::kInvalidArgument, std::string("run: ") + e.what());
  }
  mc.kernel = kernel->path;
  mc.cmdline = guestabi::image_cmdline(a.verbose_boot, param);
  mc.console_out_fd = STDOUT_FILENO;
  mc.console_in_fd = (a.req.interactive || a.req.tty) ? STDIN_FILENO : -1;
  mc.console_input = vm::ConsoleInput::kAtWorkloadExec;
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
    text = attach_spec(p.mc, p.attach, p.summary).dump();
  } catch (const nlohmann::json::exception& e) {
    if (p.attach.level >= LogLevel::kDebug)
      std::cerr << "img2vm: running the VM in this process: " << e.what() << "\n";
    return false;
  }
  UniqueFd spec = sealed_memfd("img2vm-vm-spec", text);
  for (int fd : {spec.get(), p.overrides.get()})
    if (fd >= 0 && ::fcntl(fd, F_SETFD, 0) != 0) throw_errno("fcntl");
  std::cout.flush();
  std::cerr.flush();
  std::fflush(nullptr);
  std::string fd_arg = std::to_string(spec.get());
  const char* argv[] = {"img2vm-vmm", "--spec-fd", fd_arg.c_str(), nullptr};
  ::execv(vmm.c_str(), const_cast<char* const*>(argv));
  throw_errno("cannot start the VMM " + vmm.string());
}

// --network tap: the host side (device, addresses, nftables rules, reserved ports) is set up in
// this process, as root. The VM runs in img2vm-vmm, a child given the device's descriptor
// (NetConfig::tap), which gives up root and every capability before the guest runs
// (attach.run_as). This process keeps nothing next to the guest: it waits for the child, passes
// on the signals sent to it, and undoes the host side afterwards (p.tap's destructor, once
// run_image returns). Returns the child's exit code.
int run_tap_vmm(PreparedRun& p) {
  std::string text;
  try {
    text = attach_spec(p.mc, p.attach, p.summary).dump();
  } catch (const nlohmann::json::exception& e) {
    throw Error(ErrorKind::kInvalidArgument,
                std::string("--network tap: the VM cannot be handed to img2vm-vmm: ") + e.what());
  }
  UniqueFd spec = sealed_memfd("img2vm-vm-spec", text);
  const std::string fd_arg = std::to_string(spec.get());
  const char* argv[] = {"img2vm-vmm", "--spec-fd", fd_arg.c_str(), nullptr};
  const std::string exec_failed = "img2vm: cannot start the VMM " + p.vmm.string() + "\n";
  const int pass[] = {spec.get(), p.overrides.get(), p.tap->device_fd()};

  // Blocked before the child exists, so that nothing sent meanwhile is lost; the child starts
  // with the mask and SIGCHLD action this process had.
  sigset_t wait_set = relayed_signals(), old_mask;
  sigaddset(&wait_set, SIGCHLD);
  struct sigaction dfl = {};
  struct sigaction old_chld = {};
  dfl.sa_handler = SIG_DFL;
  ::sigaction(SIGCHLD, &dfl, &old_chld);  // not SIG_IGN: the child must stay waitable
  ::pthread_sigmask(SIG_BLOCK, &wait_set, &old_mask);
  std::cout.flush();
  std::cerr.flush();
  std::fflush(nullptr);
  const pid_t parent = ::getpid();
  const pid_t child = ::fork();
  if (child == 0) {
    // Only async-signal-safe calls between fork and exec. Nothing but stdio and `pass` goes
    // to the VMM (whatever this process still has open and forgot to mark).
    (void)::close_range(3, ~0u, CLOSE_RANGE_CLOEXEC);
    for (int fd : pass)
      if (fd >= 0) ::fcntl(fd, F_SETFD, 0);
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);  // killed with this process (kept across its setuid)
    if (::getppid() != parent) ::_exit(kExitRunFailed);
    ::sigaction(SIGCHLD, &old_chld, nullptr);
    ::pthread_sigmask(SIG_SETMASK, &old_mask, nullptr);
    ::execv(p.vmm.c_str(), const_cast<char* const*>(argv));
    (void)!::write(STDERR_FILENO, exec_failed.data(), exec_failed.size());
    ::_exit(kExitRunFailed);
  }
  auto restore = [&] {
    struct timespec zero {};
    sigset_t relayed = relayed_signals();
    while (::sigtimedwait(&relayed, nullptr, &zero) > 0) {
    }
    ::pthread_sigmask(SIG_SETMASK, &old_mask, nullptr);
    ::sigaction(SIGCHLD, &old_chld, nullptr);
  };
  if (child < 0) {
    int e = errno;
    restore();
    throw_errno("cannot start the VMM: fork", e);
  }
  int status = 0;
  for (;;) {
    if (::waitpid(child, &status, WNOHANG) == child) break;
    siginfo_t si{};
    int sig = ::sigwaitinfo(&wait_set, &si);
    if (sig <= 0 || sig == SIGCHLD) continue;
    // What the terminal sends (Ctrl-C, a resize) reaches the child itself, in the same process
    // group; what a process sends to this one is passed on, as sudo does.
    if ((si.si_code == SI_USER || si.si_code == SI_QUEUE) && si.si_pid != child) ::kill(child, sig);
  }
  restore();
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  std::cerr << "img2vm: the VMM (img2vm-vmm) was killed by signal " << WTERMSIG(status) << " ("
            << ::strsignal(WTERMSIG(status)) << ")\n";
  return kExitRunFailed;
}

int run_image(RunArgs& a, Globals& g) {
  PreparedRun p = prepare_run(a, g);
  if (p.tap) return run_tap_vmm(p);
  if (exec_vmm(p)) return kExitRunFailed;  // not reached: exec_vmm execs or throws
  return run_attached(std::move(p.mc), p.attach, std::move(p.summary));
}

[[noreturn]] void unsupported(const std::string& flag, const std::string& why) {
  throw CLI::ValidationError(flag, why);
}

}  // namespace

void register_run(CLI::App& app, Globals& g, Action* slot) {
  auto a = std::make_shared<RunArgs>();
  auto* sub = app.add_subcommand("run", "Boot an image as a microVM and run its command, like docker run");
  // No fallthrough to the global flags (add_global_flags): the words after the image must stay
  // here, not go to the parent. So run takes --json and --verbose itself (docker's -v is
  // --volume, refused below).
  sub->add_flag("--json", g.json, "Machine-readable summary on stderr when the VM ends");
  sub->add_flag("--verbose", g.verbose, "More detail on stderr (as --log-level info)");
  // docker's -h is --hostname; help stays available as --help.
  sub->set_help_flag("--help", "Print this help message and exit");
  // Everything after the image belongs to the command, options included (docker's rule).
  sub->prefix_command();
  sub->footer(
      "Usage: img2vm run [OPTIONS] IMAGE [COMMAND [ARG...]]\n"
      "IMAGE is a registry reference (pulled when missing), oci:DIR[:TAG] or docker-archive:FILE[:REF].\n"
      "Exit code: the workload's; 122 the guest init failed, 123 the guest kernel died, 124 --timeout,\n"
      "125 img2vm could not run the VM, 130 stopped from the host.");

  sub->add_option("-e,--env", a->req.env, "Set an environment variable (KEY=VALUE, or KEY to pass the host's)")
      ->allow_extra_args(false);
  sub->add_option("--env-file", a->req.env_files, "Read environment variables from a file (docker's format)")
      ->allow_extra_args(false);
  sub->add_option("--entrypoint", a->entrypoint, "Override the image's ENTRYPOINT (\"\" clears it)")
      ->each([a](const std::string&) { a->entrypoint_set = true; });
  sub->add_option("-w,--workdir", a->req.workdir, "Working directory inside the guest");
  sub->add_option("-u,--user", a->req.user, "User: name, uid, name:group or uid:gid");
  sub->add_option("-h,--hostname", a->req.hostname, "Guest host name");
  sub->add_option("--dns", a->req.dns, "Nameserver for a generated /etc/resolv.conf")->allow_extra_args(false);
  sub->add_flag("-i,--interactive", a->req.interactive, "Connect stdin to the workload");
  sub->add_flag("-t,--tty", a->req.tty, "Give the workload a terminal (host terminal in raw mode)");
  sub->add_flag("--rm", a->rm, "Discard the VM's disk writes at exit (always the case without --keep)");
  sub->add_option("--keep", a->keep, "Run on a copy of the rootfs written to FILE, which stays afterwards");
  sub->add_option("--kernel", a->kernel, "Guest kernel (vmlinux or bzImage); default: our cached build");
  sub->add_option("--cpus", a->cpus, "Number of vCPUs (default 1)");
  sub->add_option("-m,--memory", a->memory, "Guest memory: 512M, 1G, or a number of MiB (default 256M)");
  sub->add_flag("--hugepages", a->hugepages, "Back guest memory with 2 MiB huge pages (from /proc/sys/vm/nr_hugepages)");
  sub->add_option("--disk", a->disks, "Attach FILE[:ro] as an extra virtio disk (/dev/vdb, ...)")->allow_extra_args(false);
  sub->add_option("--timeout", a->timeout, "Stop the VM after this long (e.g. 30s, 5m); exit 124");
  sub->add_option("--stop-timeout", a->stop_timeout, "After a stop request, how long the workload gets (default 10s)");
  sub->add_option("--platform", a->platform, "os/arch[/variant] to select from a multi-platform image");
  sub->add_option("--size", a->size, "Root filesystem size (e.g. 2G); default: from the content");
  sub->add_option("--extra-space", a->extra_space, "Free space in the root filesystem (default 16M)");
  sub->add_flag("--timings", a->timings, "Print VMM setup, kernel boot, init and time to exec");
  sub->add_flag("--verbose-boot", a->verbose_boot, "Show the guest kernel's boot messages");
  sub->add_option("--log-level", a->log_level, "error, warn (default), info or debug");
  // docker flags that img2vm does not offer (yet): a clear refusal rather than "unexpected".
  sub->add_option("--network,--net", a->network,
                  "user[:outbound=on|off,host_loopback=on|off] (default: user, rootless), none, tap[=NAME]");
  sub->add_option("-p,--publish", a->publish, "Publish a guest port: [HOSTIP:][HOSTPORT:]GUESTPORT[/tcp|/udp]")
      ->allow_extra_args(false);
  sub->add_flag("-P,--publish-all", a->publish_all, "Publish every exposed port on a free host port");
  sub->add_option("--expose", a->expose, "Expose a port or range (PORT[-PORT][/PROTO]) for -P")->allow_extra_args(false);
  sub->add_option_function<std::string>("-v,--volume", [](const std::string&) {
    unsupported("--volume", "bind mounts are not supported; attach an ext4 image with --disk FILE");
  });
  sub->add_option_function<std::string>("--mount", [](const std::string&) {
    unsupported("--mount", "bind mounts are not supported; attach an ext4 image with --disk FILE");
  });
  sub->add_option_function<std::string>("--name", [](const std::string&) {
    unsupported("--name", "named VMs are not supported: img2vm run is attached and has no daemon");
  });
  sub->add_flag_function("-d,--detach", [](int64_t) {
    unsupported("--detach", "detached runs are not supported: img2vm run stays attached (use your shell's &)");
  });
  sub->add_flag_function("--privileged", [](int64_t) {
    unsupported("--privileged", "the guest is already root in its own VM; there is nothing to grant");
  });

  sub->callback([a, sub, &g, slot] {
    a->words = sub->remaining();
    *slot = [a, &g] {
      if (a->words.empty()) {
        std::cerr << "img2vm: run: no image given (img2vm run [OPTIONS] IMAGE [COMMAND...])\n";
        return kExitUsage;
      }
      // prefix_command() hands everything from the first unknown word on to us, so an unknown
      // option before the image lands here.
      if (a->words[0].size() > 1 && a->words[0][0] == '-') {
        std::cerr << "img2vm: run: unknown option " << a->words[0] << " (see 'img2vm run --help')\n";
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
