// `img2vm run [OPTIONS] IMAGE [CMD...]`: pull if needed, convert if needed (the rootfs cache),
// and boot the image in our own KVM runner (lib/vm), like `docker run`. The workload's output is
// the VM's console on stdout; its exit code is ours. Failures of img2vm itself exit 125, as
// docker run does; the runner's own outcomes are 122-125 and 130 (docs/cli.md).
#include <fcntl.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <termios.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>
#include <thread>

#include "cli.hpp"
#include "commands.hpp"
#include "guest_kernel.hpp"
#include "image_input.hpp"
#include "img2vm/base/error.hpp"
#include "img2vm/base/fd.hpp"
#include "img2vm/vm/disk_view.hpp"
#include "img2vm/vm/guest_abi.hpp"
#include "img2vm/vm/kvm_detect.hpp"
#include "img2vm/vm/machine.hpp"
#include "img2vm/vm/net_slirp.hpp"
#include "img2vm/vm/net_tap.hpp"
#include "img2vm/vm/port_forward.hpp"
#include "run_options.hpp"

namespace img2vm::cli {

namespace fs = std::filesystem;

namespace {

constexpr int kExitRunFailed = 125;  // img2vm itself failed (docker run's convention)

enum class LogLevel { kError, kWarn, kInfo, kDebug };

LogLevel parse_log_level(const std::string& s) {
  if (s == "error") return LogLevel::kError;
  if (s == "warn" || s == "warning") return LogLevel::kWarn;
  if (s == "info") return LogLevel::kInfo;
  if (s == "debug") return LogLevel::kDebug;
  throw Error(ErrorKind::kInvalidArgument, "--log-level: \"" + s + "\" is not one of error, warn, info, debug");
}

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

// The host terminal in raw mode for -t, restored on every way out of `run`.
class RawTerminal {
 public:
  explicit RawTerminal(int fd) : fd_(fd) {
    if (::tcgetattr(fd_, &saved_) != 0) throw_errno("cannot read the terminal settings of stdin");
    struct termios raw = saved_;
    ::cfmakeraw(&raw);
    if (::tcsetattr(fd_, TCSANOW, &raw) != 0) throw_errno("cannot put stdin in raw mode");
  }
  ~RawTerminal() { ::tcsetattr(fd_, TCSANOW, &saved_); }
  RawTerminal(const RawTerminal&) = delete;
  RawTerminal& operator=(const RawTerminal&) = delete;

 private:
  int fd_;
  struct termios saved_ {};
};

// -t: the host terminal's size, for the guest's tty.
void pass_window_size(vm::Machine& m, int fd) {
  struct winsize ws {};
  if (::ioctl(fd, TIOCGWINSZ, &ws) == 0 && ws.ws_row > 0 && ws.ws_col > 0) m.set_window_size(ws.ws_row, ws.ws_col);
}

// Blocks the signals img2vm relays for as long as it lives (threads created meanwhile inherit
// the mask), and restores the previous mask afterwards.
class SignalMask {
 public:
  SignalMask() {
    sigemptyset(&set_);
    for (int s : {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGWINCH}) sigaddset(&set_, s);
    ::pthread_sigmask(SIG_BLOCK, &set_, &old_);
  }
  ~SignalMask() {
    // Drop what arrived but was not relayed, so it does not kill us on unblocking.
    struct timespec zero {};
    while (::sigtimedwait(&set_, nullptr, &zero) > 0) {
    }
    ::pthread_sigmask(SIG_SETMASK, &old_, nullptr);
  }
  const sigset_t& set() const { return set_; }

 private:
  sigset_t set_{}, old_{};
};

// Relays the host's signals to the guest as docker run's --sig-proxy does: the first SIGINT or
// SIGTERM asks the workload to stop (the image's StopSignal); if it has not ended after the stop
// timeout, or on a second one, the VM is stopped. SIGHUP, SIGQUIT, SIGUSR1 and SIGUSR2 are
// delivered to the workload as they are. With -t, SIGWINCH passes the terminal's new size on.
class SignalRelay {
 public:
  SignalRelay(vm::Machine& m, const SignalMask& mask, std::chrono::milliseconds stop_timeout, bool say, int tty_fd)
      : m_(m), set_(mask.set()), stop_timeout_(stop_timeout), say_(say), tty_fd_(tty_fd), thread_([this] { loop(); }) {}
  ~SignalRelay() {
    done_ = true;
    thread_.join();
  }

 private:
  void loop() {
    using clock = std::chrono::steady_clock;
    std::optional<clock::time_point> deadline;
    while (!done_) {
      struct timespec tick {0, 100'000'000};
      int sig = ::sigtimedwait(&set_, nullptr, &tick);
      if (deadline && clock::now() >= *deadline) {
        if (say_) std::fprintf(stderr, "\r\nimg2vm: the workload did not stop in time; stopping the VM\r\n");
        m_.stop();
        deadline.reset();
      }
      if (sig <= 0) continue;
      if (sig == SIGINT || sig == SIGTERM) {
        if (++stops_ == 1) {
          if (say_)
            std::fprintf(stderr, "\r\nimg2vm: stopping the workload (%s again stops the VM)\r\n",
                         sig == SIGINT ? "Ctrl-C" : "SIGTERM");
          m_.request_stop();
          deadline = clock::now() + stop_timeout_;
        } else {
          m_.stop();
        }
      } else if (sig == SIGWINCH) {
        if (tty_fd_ >= 0) pass_window_size(m_, tty_fd_);
      } else {
        m_.signal_workload(sig);
      }
    }
  }

  vm::Machine& m_;
  sigset_t set_;
  std::chrono::milliseconds stop_timeout_;
  bool say_;
  int tty_fd_;
  int stops_ = 0;
  std::atomic<bool> done_{false};
  std::thread thread_;
};

std::optional<double> ms(const std::optional<std::chrono::microseconds>& t) {
  if (!t) return std::nullopt;
  return double(t->count()) / 1000.0;
}

nlohmann::json timings_json(const vm::BootTimings& t) {
  nlohmann::json j = nlohmann::json::object();
  auto put = [&](const char* k, std::optional<double> v) {
    if (v) j[k] = *v;
  };
  put("vmm_setup", ms(t.setup_done));
  if (t.first_entry && t.init_started) put("kernel_boot", ms(*t.init_started - *t.first_entry));
  if (t.init_started && t.workload_exec) put("init", ms(*t.workload_exec - *t.init_started));
  put("to_exec", ms(t.workload_exec));
  put("total", ms(t.ended));
  return j;
}

std::string timings_line(const vm::BootTimings& t) {
  auto f = [](std::optional<double> v) {
    if (!v) return std::string("-");
    char b[32];
    std::snprintf(b, sizeof b, "%.1f ms", *v);
    return std::string(b);
  };
  std::optional<double> kernel, init;
  if (t.first_entry && t.init_started) kernel = ms(*t.init_started - *t.first_entry);
  if (t.init_started && t.workload_exec) init = ms(*t.workload_exec - *t.init_started);
  return "img2vm: timings: vmm setup " + f(ms(t.setup_done)) + ", kernel boot " + f(kernel) + ", init " + f(init) +
         ", to exec " + f(ms(t.workload_exec)) + ", total " + f(ms(t.ended));
}

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

int run_image(RunArgs& a, Globals& g) {
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

  vm::MachineConfig mc;
  mc.memory_mib = parse_memory_mib(a.memory);
  mc.vcpus = a.cpus;
  mc.hugepages = a.hugepages;
  if (!a.timeout.empty()) mc.timeout = parse_duration("--timeout", a.timeout);
  auto stop_timeout = parse_duration("--stop-timeout", a.stop_timeout);
  rootfs::RunOverrides overrides = build_overrides(a.req, process_env());
  std::vector<ExtraDisk> extra;
  for (const auto& d : a.disks) extra.push_back(parse_disk(d));

  // The network: user-mode (rootless) by default, as docker's default bridge: the guest is
  // 10.0.2.15/24 behind 10.0.2.2, with DNS at 10.0.2.3 (vm/net_slirp.hpp).
  NetworkChoice net = parse_network(a.network);
  std::vector<vm::PortForward> forwards;
  for (const auto& p : a.publish)
    for (auto& f : vm::parse_port_forward(p)) forwards.push_back(std::move(f));
  if (net.mode == NetworkChoice::Mode::kNone && (!forwards.empty() || a.publish_all))
    throw Error(ErrorKind::kInvalidArgument, "-p/-P: --network none has no network to publish ports on");
  parse_exposed_ports(a.expose, "--expose");  // checked now; used once the image is known
  if (net.mode == NetworkChoice::Mode::kUser) {
    rootfs::NetConfig n;
    n.interface = "eth0";
    n.address = std::string(vm::usernet::kGuest);
    n.prefix = vm::usernet::kPrefixLength;
    n.gateway = std::string(vm::usernet::kGateway);
    overrides.net = n;  // the MTU comes from the device (VIRTIO_NET_F_MTU)
    if (overrides.dns.empty()) overrides.dns = {std::string(vm::usernet::kDns)};
  }

  // KVM first: no point pulling and converting for a VM that cannot start.
  vm::KvmInfo kvm = vm::detect_kvm();
  if (kvm.kind == vm::KvmKind::kUnavailable)
    throw Error(ErrorKind::kNotFound, "cannot run VMs here: " + kvm.detail);
  if (kvm.kind == vm::KvmKind::kPvm)
    log(LogLevel::kWarn, "warning: /dev/kvm is PVM, a software nested hypervisor (" + kvm.detail +
                             "): a Linux guest boots very slowly or stalls here; use a host with hardware KVM");
  else
    log(LogLevel::kInfo, std::string("KVM: ") + vm::to_string(kvm.kind) + " (" + kvm.detail + ")");

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
  if (net.mode == NetworkChoice::Mode::kUser) {
    mc.net.emplace();
    mc.net->user.outbound = net.outbound;
    mc.net->user.host_loopback = net.host_loopback;
    mc.net->user.forwards = forwards;
  }
  // The tap network: a device of the VM's own on the host, its host side set up now (it needs
  // CAP_NET_ADMIN) and undone when the run ends; the guest gets the address chosen for it.
  std::shared_ptr<vm::TapBackend> tap;
  if (net.mode == NetworkChoice::Mode::kTap) {
    vm::TapNetConfig tc;
    tc.name = net.tap_name;
    tc.outbound = net.outbound;
    tc.forwards = forwards;
    mc.net.emplace();
    tap = std::make_shared<vm::TapBackend>(tc, mc.net->mtu);
    mc.net->backend = tap;
    const vm::TapNetInfo& ti = tap->info();
    rootfs::NetConfig n;
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
    log(LogLevel::kInfo, "network: tap device " + ti.device + (ti.managed ? "" : " (existing)") + ", guest " + ti.guest_ip +
                             "/" + std::to_string(ti.prefix_length) + " via " + ti.host_ip);
  }

  // The root disk: a private copy-on-write view of the cached rootfs, or with --keep a copy of
  // it that the run writes and that stays.
  vm::DiskConfig rootdisk;
  rootdisk.id = "img2vm-root";
  if (!a.keep.empty()) {
    vm::clone_file(root.path, a.keep);
    rootdisk.path = a.keep;
    rootdisk.mode = vm::DiskMode::kReadWrite;
  } else {
    rootdisk.path = root.path;
    rootdisk.mode = vm::DiskMode::kCopyOnWrite;
  }
  mc.disks.push_back(rootdisk);
  for (size_t i = 0; i < extra.size(); ++i) {
    vm::DiskConfig d;
    d.path = extra[i].path;
    d.mode = extra[i].read_only ? vm::DiskMode::kReadOnly : vm::DiskMode::kReadWrite;
    mc.disks.push_back(d);
  }

  // The overrides: inline when short, else on a raw block device after the other disks.
  std::optional<TempDir> scratch;
  std::string param = rootfs::run_overrides_kernel_param(overrides);
  if (param.size() > kInlineOverridesMax) {
    if (mc.disks.size() >= 26) throw Error(ErrorKind::kLimit, "too many disks");
    scratch.emplace("img2vm-run");
    fs::path f = scratch->path() / "overrides.img";
    write_file_atomic(f, overrides_disk_image(overrides));
    vm::DiskConfig d;
    d.path = f;
    d.mode = vm::DiskMode::kReadOnly;
    d.id = "img2vm-overrides";
    param = std::string(rootfs::kRunParam) + "=blk:/dev/vd" + char('a' + mc.disks.size());
    mc.disks.push_back(d);
  }
  mc.kernel = kernel->path;
  mc.cmdline = vm::abi::image_cmdline(a.verbose_boot, param);
  mc.console_out_fd = STDOUT_FILENO;
  mc.console_in_fd = (a.req.interactive || a.req.tty) ? STDIN_FILENO : -1;
  mc.console_input = vm::ConsoleInput::kAtWorkloadExec;

  SignalMask mask;
  vm::Machine machine(mc);
  log(LogLevel::kDebug, "kernel command line: " + machine.cmdline());
  log(LogLevel::kDebug, "kernel entry: " + machine.kernel_format());
  // Published ports: said on stderr (always when the host port was picked here, since there is
  // no `docker port` to ask), and as a JSON event with --json before the VM starts.
  std::vector<vm::PortForward> published = machine.published_ports();
  nlohmann::json ports_json = nlohmann::json::array();
  for (const auto& f : published) ports_json.push_back(vm::to_string(f));
  if (!published.empty()) {
    if (g.json) {
      std::cerr << nlohmann::json{{"event", "published"}, {"ports", ports_json}}.dump() << "\n";
    } else {
      bool chosen = std::any_of(forwards.begin(), forwards.end(), [](const vm::PortForward& f) { return f.host_port == 0; });
      for (const auto& f : published) log(chosen ? LogLevel::kWarn : LogLevel::kInfo, "published " + vm::to_string(f));
    }
  }
  std::optional<RawTerminal> raw;
  if (a.req.tty) raw.emplace(STDIN_FILENO);
  vm::MachineResult r;
  {
    if (a.req.tty) pass_window_size(machine, STDIN_FILENO);
    SignalRelay relay(machine, mask, stop_timeout, ::isatty(STDERR_FILENO) && !g.json, a.req.tty ? STDIN_FILENO : -1);
    r = machine.run();
  }
  raw.reset();
  int code = r.host_exit_code();
  std::vector<std::string> views = machine.disk_views();

  if (g.json) {
    nlohmann::json j = {{"image", src->name()},
                        {"manifest_digest", src->manifest_digest().str()},
                        {"platform", src->platform().str()},
                        {"rootfs", root.path.string()},
                        {"rootfs_cached", root.cached},
                        {"root_disk", views.empty() ? "" : views[0]},
                        {"kernel", kernel->path.string()},
                        {"kvm", vm::to_string(kvm.kind)},
                        {"reason", vm::to_string(r.reason)},
                        {"status", r.status},
                        {"exit_code", code},
                        {"timings_ms", timings_json(r.timings)},
                        {"network", net.mode == NetworkChoice::Mode::kUser ? "user"
                                    : net.mode == NetworkChoice::Mode::kTap ? "tap"
                                                                            : "none"},
                        {"published", ports_json}};
    if (tap)
      j["tap"] = {{"device", tap->info().device},
                  {"managed", tap->info().managed},
                  {"host_ip", tap->info().host_ip},
                  {"guest_ip", tap->info().guest_ip}};
    if (!a.keep.empty()) j["kept"] = fs::absolute(a.keep).string();
    if (!r.detail.empty()) j["detail"] = r.detail;
    std::cerr << j.dump() << "\n";
  } else {
    if (r.reason != vm::ExitReason::kExited) std::cerr << "img2vm: " << r.describe() << "\n";
    if (a.timings) std::cerr << timings_line(r.timings) << "\n";
  }
  return code;
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
