// img2vm-init: PID 1 of an img2vm microVM. Started from the runner's initramfs (run --rootfs), it
// first makes the virtio-fs share named by img2vm.root= the root. Mounts the API filesystems,
// applies the image's runtime config (/.img2vm/config.json, or the one in the overrides) and the
// runner's per-run overrides (kernel parameter img2vm.run=) with their mounts, runs ENTRYPOINT/CMD
// as docker would, reaps every process, forwards signals, and reports the workload's exit status
// through the I/O ports documented in docs/guest-abi.md.
#include <fcntl.h>
#include <ftw.h>
#include <grp.h>
#include <linux/magic.h>
#include <net/if.h>
#include <poll.h>
#include <sys/io.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/random.h>
#include <sys/reboot.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "img2vm/guestabi/cmdline.hpp"
#include "img2vm/guestabi/config.hpp"
#include "img2vm/guestabi/error.hpp"
#include "img2vm/guestabi/paths.hpp"
#include "img2vm/guestabi/ports.hpp"
#include "img2vm/init/agent.hpp"
#include "img2vm/init/command.hpp"
#include "img2vm/init/fresh_inputs.hpp"
#include "img2vm/init/guest_files.hpp"
#include "img2vm/init/limits.hpp"
#include "img2vm/init/mounts.hpp"
#include "img2vm/init/network.hpp"
#include "img2vm/init/sys.hpp"
#include "img2vm/init/user.hpp"
#include "img2vm/init/warm.hpp"

namespace {

namespace guestabi = img2vm::guestabi;
namespace init = img2vm::init;
using init::Error;
using namespace img2vm::guestabi;  // the ports, marks and INIT_FAIL codes (docs/guest-abi.md)

// How often PID 1 looks at the SIGNAL port while the workload runs (docs/guest-abi.md §5).
constexpr long kSignalPollNs = 100'000'000;
// The most the init reads of /proc/cmdline and the console's sysfs file.
constexpr std::size_t kSmallFileMax = 65536;

constexpr rlim_t kNofile = 1048576;  // docker's default RLIMIT_NOFILE (soft and hard)

bool g_ports = false;
// Without a tty, the workload's stderr: the second serial port (ttyS1, COM2), which the host
// keeps apart from the console (docs/guest-abi.md §7). -1 when there is none (a kernel with one
// serial port, or a VMM without COM2): the workload's stderr is then the console, as its stdout.
int g_stderr_port = -1;

void port_write(unsigned short port, unsigned char value) {
  if (g_ports) outb(value, port);
}

// A pending host request on the SIGNAL port: 0 for none (0x00 and 0xff, what an absent device
// reads as), a signal number 1-64, -1 for kStopRequest, -2 for kWindowSizeChanged, -3 for
// kStdinClosed.
int port_signal_request() {
  if (!g_ports) return 0;
  unsigned char v = inb(kSignalPort);
  if (v == kStopRequest) return -1;
  if (v == kWindowSizeChanged) return -2;
  if (v == kStdinClosed) return -3;
  if (v >= 1 && v <= 64) return v;
  return 0;
}

void say(const std::string& line) {
  std::string l = "img2vm-init: " + line + "\n";
  ssize_t ignored = ::write(2, l.data(), l.size());
  (void)ignored;
}

void warn(const std::string& line) { say("warning: " + line); }

std::string errno_text(int err) { return std::strerror(err); }

// An init failure: `what` failed because of `why`; reported on INIT_FAIL with `code`.
struct InitFailure {
  unsigned char code;
  std::string line;
};

[[noreturn]] void fail(unsigned char code, const std::string& what, const std::string& why) {
  throw InitFailure{code, what + ": " + why};
}

void on_alarm(int) {}

// The workload's last output may still wait in the console tty's buffer, which the kernel's
// serial driver empties on the UART's interrupts: the port write that ends the VM would cut it
// off (seen as `podman run -it` losing the shell's last line). Waits for it, at most 2 s (output
// stopped with ^S would otherwise hold the VM forever): the alarm interrupts tcdrain.
void drain_console() {
  const bool console = ::isatty(1);
  if (!console && g_stderr_port < 0) return;
  struct sigaction sa {};
  sa.sa_handler = on_alarm;
  sigemptyset(&sa.sa_mask);
  ::sigaction(SIGALRM, &sa, nullptr);
  sigset_t alarm_only;
  sigemptyset(&alarm_only);
  sigaddset(&alarm_only, SIGALRM);
  ::sigprocmask(SIG_UNBLOCK, &alarm_only, nullptr);
  ::alarm(2);
  if (console) (void)::tcdrain(1);
  if (g_stderr_port >= 0) (void)::tcdrain(g_stderr_port);
  ::alarm(0);
}

[[noreturn]] void end_vm(unsigned short port, unsigned char value) {
  drain_console();
  ::sync();
  // A clean ext4 for the next boot; fails harmlessly if something still holds files open.
  ::mount(nullptr, "/", nullptr, MS_REMOUNT | MS_RDONLY, nullptr);
  ::sync();
  port_write(port, value);
  // Only reached when the write did not end the VM (no such device, or no port access).
  ::reboot(RB_AUTOBOOT);
  for (;;) ::pause();
}

bool is_mountpoint(const std::string& path) {
  struct stat st {
  }, parent{};
  if (::stat(path.c_str(), &st) != 0) return false;
  if (::stat((path + "/..").c_str(), &parent) != 0) return false;
  return st.st_dev != parent.st_dev || st.st_ino == parent.st_ino;
}

// Mounts unless something is mounted there already. Optional mounts only warn when the kernel
// lacks the file system, and are silent about it otherwise.
void mount_fs(const char* type, const std::string& target, unsigned long flags, const char* data,
              bool required = true) {
  if (required) {
    try {
      init::make_directories(target, 0755);
    } catch (const Error& e) {
      fail(kFailMount, "mounting " + std::string(type) + " on " + target, e.what());
    }
  } else {
    struct stat st {};
    if (::stat(target.c_str(), &st) != 0 && ::mkdir(target.c_str(), 0755) != 0) return;
  }
  if (is_mountpoint(target)) return;
  if (::mount(type, target.c_str(), type, flags, data) != 0) {
    int err = errno;
    if (!required) return;
    fail(kFailMount, "mounting " + std::string(type) + " on " + target, errno_text(err));
  }
}

void open_console_fds() {
  for (int fd = 0; fd <= 2; ++fd) {
    if (::fcntl(fd, F_GETFD) != -1) continue;
    int c = ::open("/dev/console", O_RDWR | O_NOCTTY);
    if (c < 0) return;
    if (c != fd) {
      ::dup2(c, fd);
      ::close(c);
    }
  }
}

void mount_api_filesystems() {
  constexpr unsigned long kSafe = MS_NOSUID | MS_NODEV | MS_NOEXEC;
  mount_fs("devtmpfs", "/dev", MS_NOSUID | MS_NOEXEC, "mode=0755");
  open_console_fds();
  mount_fs("proc", "/proc", kSafe, nullptr);
  mount_fs("sysfs", "/sys", kSafe, nullptr);
  mount_fs("devpts", "/dev/pts", MS_NOSUID | MS_NOEXEC,
           "newinstance,ptmxmode=0666,mode=0620,gid=5");
  mount_fs("tmpfs", "/dev/shm", kSafe, "mode=1777,size=65536k");
  mount_fs("mqueue", "/dev/mqueue", kSafe, nullptr, /*required=*/false);
  mount_fs("cgroup2", "/sys/fs/cgroup", kSafe, nullptr, /*required=*/false);
  // What docker puts in /dev besides device nodes.
  struct Link {
    const char* target;
    const char* path;
  };
  for (auto [target, path] :
       {Link{"/proc/self/fd", "/dev/fd"}, Link{"/proc/self/fd/0", "/dev/stdin"},
        Link{"/proc/self/fd/1", "/dev/stdout"}, Link{"/proc/self/fd/2", "/dev/stderr"},
        Link{"/proc/kcore", "/dev/core"}}) {
    ::symlink(target, path);
  }
  // The pts instance mounted above has its own ptmx; make /dev/ptmx point at it.
  struct stat st {};
  if (::lstat("/dev/ptmx", &st) == 0 && !S_ISLNK(st.st_mode)) ::unlink("/dev/ptmx");
  ::symlink("pts/ptmx", "/dev/ptmx");
}

// nftw's callback freeing the initramfs: everything but / itself (other file systems are not
// visited: FTW_MOUNT).
int remove_initramfs_entry(const char* path, const struct stat*, int, struct FTW*) {
  if (std::strcmp(path, "/") != 0) ::remove(path);
  return 0;
}

// Started from the runner's initramfs (run --rootfs: `/` is a ramfs or tmpfs holding only this
// program): mounts the virtio-fs share that img2vm.root= names, frees the initramfs and makes the
// share / (switch_root's steps: mount --move, chroot, chdir). Returns false, doing nothing, on
// any other root (an image's ext4).
bool enter_root_share() {
  struct statfs sf {};
  if (::statfs("/", &sf) != 0 || (sf.f_type != RAMFS_MAGIC && sf.f_type != TMPFS_MAGIC))
    return false;
  ::mkdir("/proc", 0755);
  if (::mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, nullptr) != 0)
    fail(kFailMount, "mounting proc on /proc in the initramfs", errno_text(errno));
  std::string cmdline;
  try {
    cmdline = init::read_file("/proc/cmdline", kSmallFileMax);
  } catch (const Error& e) {
    fail(kFailOverrides, "reading /proc/cmdline", e.what());
  }
  ::umount2("/proc", MNT_DETACH);
  auto value = guestabi::kernel_param(cmdline, guestabi::kRootParam);
  if (!value)
    fail(kFailMount, "the root file system",
         "started from an initramfs without " + std::string(guestabi::kRootParam) + "=");
  guestabi::MountSpec root;
  try {
    guestabi::RootShare share = guestabi::parse_root_share(*value);
    root.tag = share.tag;
    root.readonly = share.read_only;
  } catch (const guestabi::Error& e) {
    fail(kFailOverrides, "the root share", e.what());
  }
  root.target = "/";
  constexpr const char* kNewRoot = "/newroot";
  const std::string what = "mounting " + init::mount_name(root) + " on /";
  if (::mkdir(kNewRoot, 0755) != 0) fail(kFailMount, what, "mkdir: " + errno_text(errno));
  init::MountCall c = init::mount_call(root);
  if (::mount(c.source.c_str(), kNewRoot, c.fstype.c_str(), c.flags, nullptr) != 0)
    fail(kFailMount, what, init::mount_error_text(root, errno));
  // This program keeps running from its (now unlinked) pages.
  ::nftw("/", remove_initramfs_entry, 16, FTW_DEPTH | FTW_PHYS | FTW_MOUNT);
  if (::chdir(kNewRoot) != 0 || ::mount(".", "/", nullptr, MS_MOVE, nullptr) != 0 ||
      ::chroot(".") != 0 || ::chdir("/") != 0)
    fail(kFailMount, "moving the root share over /", errno_text(errno));
  return true;
}

// Where the file mounts' copies live while they are bound (a tmpfs, detached once all are).
constexpr const char* kFileMountsStaging = "/dev/.img2vm-files";

// The run overrides' mounts, in order, each on its target created as docker creates a missing
// mount point (root-owned, 0755, parents too); a file mount's target is resolved inside the
// root and created empty when missing, as crun does.
void mount_overrides(const std::vector<guestabi::MountSpec>& mounts) {
  init::FileMounts files(kFileMountsStaging);
  init::UniqueFd root;
  for (const auto& m : mounts) {
    const std::string what = "mounting " + init::mount_name(m) + " on " + m.target;
    if (m.type == guestabi::MountSpec::Type::kFile) {
      if (!root) root = init::UniqueFd(::open("/", O_PATH | O_DIRECTORY | O_CLOEXEC));
      try {
        if (!root) init::throw_errno("opening /");
        files.place(root.get(), m);
      } catch (const Error& e) {
        fail(kFailMount, what, e.what());
      }
      continue;
    }
    try {
      init::make_directories(m.target, 0755);
    } catch (const Error& e) {
      fail(kFailMount, what, e.what());
    }
    init::MountCall c = init::mount_call(m);
    if (::mount(c.source.c_str(), m.target.c_str(), c.fstype.c_str(), c.flags,
                c.data.empty() ? nullptr : c.data.c_str()) != 0)
      fail(kFailMount, what, init::mount_error_text(m, errno));
  }
}

guestabi::RuntimeConfig load_config() {
  std::string path(guestabi::kConfigPath);
  std::string text;
  try {
    text = init::read_file(path, guestabi::kMaxConfigJson + 1);
  } catch (const Error& e) {
    throw InitFailure{kFailConfig, std::string("reading the runtime config: ") + e.what()};
  }
  if (text.size() > guestabi::kMaxConfigJson)
    throw InitFailure{
        kFailConfig, path + ": larger than " + std::to_string(guestabi::kMaxConfigJson) + " bytes"};
  try {
    return guestabi::runtime_config_from_json(text);
  } catch (const guestabi::Error& e) {
    throw InitFailure{kFailConfig, path + ": " + e.what()};
  }
}

std::string read_cmdline() {
  try {
    return init::read_file("/proc/cmdline", kSmallFileMax);
  } catch (const Error& e) {
    throw InitFailure{kFailOverrides, e.what()};
  }
}

bool snapshot_mode(const std::string& cmdline) {
  try {
    return guestabi::snapshot_requested(cmdline);
  } catch (const guestabi::Error& e) {
    throw InitFailure{kFailOverrides, e.what()};
  }
}

guestabi::RunOverrides load_overrides(const std::string& cmdline, bool snapshot) {
  try {
    return init::run_overrides_from_cmdline(cmdline, snapshot);
  } catch (const Error& e) {
    throw InitFailure{kFailOverrides, e.what()};
  }
}

// The run's entropy and clock, before anything else uses them, in every boot: a VM restored from
// a snapshot has the saved VM's RNG state and a clock that stood still while it was a file.
// Failures are warnings: the workload can still run.
void apply_fresh_inputs(const guestabi::RunOverrides& o) {
  try {
    if (!o.entropy.empty()) init::add_entropy(o.entropy);
  } catch (const Error& e) {
    warn(e.what());
  }
  try {
    if (o.realtime_ns) init::set_realtime(*o.realtime_ns);
  } catch (const Error& e) {
    warn(e.what());
  }
}

std::string random_hostname() {
  unsigned char bytes[6] = {};
  std::size_t got = 0;
  while (got < sizeof bytes) {
    ssize_t n = ::getrandom(bytes + got, sizeof bytes - got, 0);
    if (n < 0) {
      if (errno == EINTR) continue;
      break;
    }
    got += static_cast<std::size_t>(n);
  }
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  for (unsigned char b : bytes) {
    out += kHex[b >> 4];
    out += kHex[b & 15];
  }
  return out;
}

void bring_up_loopback() {
  static bool done = false;  // before a snapshot's point (prepare_restores), then not again
  if (done) return;
  done = true;
  init::UniqueFd s(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  if (!s) {
    if (errno != EAFNOSUPPORT) warn("bringing up lo: socket: " + errno_text(errno));
    return;
  }
  struct ifreq ifr {};
  std::strncpy(ifr.ifr_name, "lo", IFNAMSIZ - 1);
  if (::ioctl(s.get(), SIOCGIFFLAGS, &ifr) != 0) {
    warn("bringing up lo: " + errno_text(errno));
    return;
  }
  ifr.ifr_flags = static_cast<short>(ifr.ifr_flags | IFF_UP | IFF_RUNNING);
  if (::ioctl(s.get(), SIOCSIFFLAGS, &ifr) != 0) warn("bringing up lo: " + errno_text(errno));
}

// Targets of the overrides' file mounts: the engine's own /etc/hosts and the like, which the
// init leaves as they are.
std::vector<std::string> g_file_mounts;

bool file_mounted(const std::string& path) {
  return std::find(g_file_mounts.begin(), g_file_mounts.end(), path) != g_file_mounts.end();
}

void write_guest_file(const std::string& path, const std::string& content) {
  try {
    if (file_mounted(path) || !init::needs_generated_file(path)) return;
    struct stat st {};
    if (::lstat(path.c_str(), &st) == 0 && S_ISLNK(st.st_mode)) ::unlink(path.c_str());
    init::rewrite_file(path, content, 0644);
  } catch (const std::exception& e) {
    warn(std::string("writing ") + path + ": " + e.what());
  }
}

void write_etc_files(const std::string& hostname, const std::vector<std::string>& dns,
                     const std::string& address) {
  if (::mkdir("/etc", 0755) != 0 && errno != EEXIST) {
    warn("creating /etc: " + errno_text(errno));
    return;
  }
  write_guest_file("/etc/hosts", init::hosts_content(hostname, address));
  write_guest_file("/etc/resolv.conf", init::resolv_conf_content(dns));
  struct stat st {};
  if (!file_mounted("/etc/hostname") &&
      (::lstat("/etc/hostname", &st) != 0 || (S_ISREG(st.st_mode) && st.st_size == 0))) {
    try {
      init::rewrite_file("/etc/hostname", init::hostname_content(hostname), 0644);
    } catch (const std::exception& e) {
      warn(std::string("writing /etc/hostname: ") + e.what());
    }
  }
}

// Before a snapshot's point: /etc and, where they are missing, the files write_etc_files()
// writes, empty or marked as the init's own, so that each resumed run writes them in place.
void create_etc_placeholders() {
  if (::mkdir("/etc", 0755) != 0 && errno != EEXIST) return;
  struct stat st {};
  for (const char* path : {"/etc/hosts", "/etc/resolv.conf", "/etc/hostname"}) {
    if (::lstat(path, &st) == 0 || errno != ENOENT) continue;
    const bool marked = std::string_view(path) != "/etc/hostname";  // hostname: empty
    try {
      init::replace_file(path, marked ? std::string(init::kGeneratedMarker) + "\n" : "", 0644);
    } catch (const std::exception& e) {
      warn(std::string("writing ") + path + ": " + e.what());
    }
  }
}

void set_rlimits() {
  struct rlimit rl {
    kNofile, kNofile
  };
  if (::setrlimit(RLIMIT_NOFILE, &rl) != 0) warn("setting RLIMIT_NOFILE: " + errno_text(errno));
}

// docker: a missing WorkingDir is created 0755, owned by root.
std::string prepare_workdir(const std::string& configured) {
  std::string dir = configured.empty() ? "/" : configured;
  if (dir.front() != '/')
    fail(kFailWorkdir, "working directory \"" + dir + "\"",
         "is invalid, it needs to be an absolute path");
  try {
    init::make_directories(dir, 0755);
  } catch (const init::NotADirectory& e) {
    fail(kFailWorkdir, "Cannot mkdir", e.path + " is not a directory");
  } catch (const Error& e) {
    fail(kFailWorkdir, "creating working directory " + dir, e.what());
  }
  return dir;
}

std::string console_tty_device() {
  try {
    std::string active = init::read_file("/sys/class/tty/console/active", kSmallFileMax);
    while (!active.empty() && (active.back() == '\n' || active.back() == ' ')) active.pop_back();
    auto space = active.rfind(' ');
    std::string name = space == std::string::npos ? active : active.substr(space + 1);
    if (!name.empty()) return "/dev/" + name;
  } catch (const Error&) {
  }
  return "/dev/console";
}

// -t: gives the console tty the host terminal's size from the WINSIZE ports (nothing when the
// host does not know it). The kernel sends SIGWINCH to the tty's foreground process group when
// the size changes.
void apply_window_size(const std::string& tty) {
  if (!g_ports) return;
  unsigned short rows = inw(kWinRowsPort), cols = inw(kWinColsPort);
  if (rows == 0 || cols == 0 || rows == 0xffff || cols == 0xffff) return;
  int fd = ::open(tty.c_str(), O_RDWR | O_NOCTTY | O_CLOEXEC);
  if (fd < 0) return;
  struct winsize ws {};
  ws.ws_row = rows;
  ws.ws_col = cols;
  ::ioctl(fd, TIOCSWINSZ, &ws);
  ::close(fd);
}

// The second serial port, raw, for the workload's stderr; -1 when the kernel has no ttyS1, or
// one that found no UART behind it (sysfs reports its type as 0, PORT_UNKNOWN), or when ttyS1
// is the console itself.
int open_stderr_port() {
  constexpr const char* kPort = "/dev/ttyS1";
  try {
    std::string type = init::read_file("/sys/class/tty/ttyS1/type", kSmallFileMax);
    if (type.empty() || type == "0\n" || type == "0") return -1;
  } catch (const Error&) {
    return -1;
  }
  if (console_tty_device() == kPort) return -1;
  // O_NONBLOCK: the open does not wait for a carrier; cleared again, so that a workload writing
  // faster than the port drains blocks instead of failing with EAGAIN.
  int fd = ::open(kPort, O_RDWR | O_NOCTTY | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) return -1;
  struct termios t {};
  int flags = ::fcntl(fd, F_GETFL);
  if (::tcgetattr(fd, &t) != 0 || flags < 0 || ::fcntl(fd, F_SETFL, flags & ~O_NONBLOCK) != 0) {
    ::close(fd);
    return -1;
  }
  ::cfmakeraw(&t);
  t.c_cflag |= CLOCAL;
  ::tcsetattr(fd, TCSANOW, &t);
  return fd;
}

// Without a tty the workload's output must reach the host byte for byte, as through docker's
// pipes: no \n -> \r\n, no echo, no line editing; and its stderr apart from its stdout, on the
// second serial port when there is one. With a tty it gets a normal cooked terminal for both.
void setup_console(bool tty) {
  if (tty) {
    if (g_stderr_port >= 0) ::close(g_stderr_port);  // opened before a snapshot's point
    g_stderr_port = -1;
    return;
  }
  if (g_stderr_port < 0) g_stderr_port = open_stderr_port();
  if (!::isatty(1)) return;
  struct termios t {};
  if (::tcgetattr(1, &t) != 0) return;
  ::cfmakeraw(&t);
  ::tcsetattr(1, TCSANOW, &t);
}

const int kForwarded[] = {SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGWINCH};

void noop_handler(int) {}

sigset_t supervised_signals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGCHLD);
  sigaddset(&set, SIGPWR);
  for (int s : kForwarded) sigaddset(&set, s);
  return set;
}

struct Workload {
  std::vector<std::string> argv;
  std::vector<std::string> env;
  std::string workdir;
  init::ExecUser user;
  bool tty = false;
  bool interactive = false;
  bool agent_signals = false;   // the host signals through the exec agent, not the SIGNAL port
  bool wait_for_start = false;  // OCI create: exec only once the agent's "start" came
  int stdin_fd = -1;            // -i without -t: the read end of the stdin relay's pipe
  // What the exec agent needs besides the above: an exec's defaults.
  std::vector<std::string> config_env;
  std::string hostname;
  std::string user_spec;
  // OCI process fields (RunOverrides): set in the child before it drops to the user.
  std::vector<guestabi::Rlimit> rlimits;
  bool no_new_privileges = false;
};

// -i without -t: the workload's stdin is a pipe, as docker's, fed by this relay (a child of
// PID 1) with what arrives on the console. The host cannot close the serial line, so when its
// input ends it says after how many bytes (SIGNAL 0x82, STDIN_BYTES); PID 1 passes that count
// on `control`, and the relay closes the pipe once it has passed on exactly that many bytes:
// the workload reads everything, then EOF.
[[noreturn]] void stdin_relay(int console, int out, int control) {
  if (g_ports) ::ioperm(kFirstPort, kPortCount, 0);
  sigset_t empty;
  sigemptyset(&empty);
  ::sigprocmask(SIG_SETMASK, &empty, nullptr);
  ::signal(SIGPIPE, SIG_IGN);
  uint32_t passed = 0, total = 0;
  bool known = false;
  char buf[4096];
  for (;;) {
    if (known && passed == total) break;
    pollfd p[2] = {{console, POLLIN, 0}, {known ? -1 : control, POLLIN, 0}};
    if (::poll(p, 2, -1) < 0) continue;
    if (p[1].revents & POLLIN) {
      uint32_t n = 0;
      if (::read(control, &n, sizeof n) == ssize_t(sizeof n)) {
        total = n;
        known = true;
      }
    } else if (p[1].revents & (POLLHUP | POLLERR)) {
      ::_exit(0);  // PID 1 is done with us
    }
    if (p[0].revents & POLLIN) {
      ssize_t n =
          ::read(console, buf, known ? std::min<size_t>(sizeof buf, total - passed) : sizeof buf);
      if (n <= 0) continue;
      for (ssize_t off = 0; off < n;) {
        ssize_t w = ::write(out, buf + off, size_t(n - off));
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) ::_exit(0);  // the workload closed its stdin: nothing more to pass on
        off += w;
      }
      passed += uint32_t(n);
    }
  }
  ::_exit(0);
}

[[noreturn]] void child_fail(int status, const std::string& line) {
  say(line);
  ::_exit(status);
}

// The workload's child, first: the signals PID 1 handles or blocks get their defaults back.
void reset_workload_signals() {
  sigset_t empty;
  sigemptyset(&empty);
  for (int s : kForwarded) ::signal(s, SIG_DFL);
  ::signal(SIGCHLD, SIG_DFL);
  ::signal(SIGPWR, SIG_DFL);
  ::sigprocmask(SIG_SETMASK, &empty, nullptr);
}

// OCI create: the workload's process exists but waits for the host's start, one byte on `gate`
// from the exec agent, the only holder of the pipe's write end. End of file: the agent ended
// and nothing can start the workload any more.
void wait_for_start(int gate) {
  char go;
  ssize_t n;
  do {
    n = ::read(gate, &go, 1);
  } while (n < 0 && errno == EINTR);
  if (n == 0) child_fail(125, "the exec agent ended before the workload was started");
  if (n < 0) child_fail(125, "waiting for the workload's start: " + errno_text(errno));
  ::close(gate);
}

// After reset_workload_signals (and wait_for_start).
[[noreturn]] void exec_workload(const Workload& w) {
  ::setsid();
  if (w.tty) {
    std::string dev = console_tty_device();
    int fd = ::open(dev.c_str(), O_RDWR);
    if (fd >= 0) {
      ::ioctl(fd, TIOCSCTTY, 1);
      for (int i = 0; i <= 2; ++i) ::dup2(fd, i);
      if (fd > 2) ::close(fd);
    }
  } else if (w.stdin_fd >= 0) {
    ::dup2(w.stdin_fd, 0);
    ::close(w.stdin_fd);
  } else if (!w.interactive) {
    int fd = ::open("/dev/null", O_RDONLY);
    if (fd >= 0 && fd != 0) {
      ::dup2(fd, 0);
      ::close(fd);
    }
  }
  if (!w.tty && g_stderr_port >= 0) ::dup2(g_stderr_port, 2);
  ::umask(022);
  bool in_workdir = ::chdir(w.workdir.c_str()) == 0;

  // Whether fork keeps the I/O bitmap varies: ask again.
  if (g_ports && ::ioperm(kFirstPort, kPortCount, 1) == 0) {
    port_write(kBootMarkPort, kMarkWorkloadExec);
    ::ioperm(kFirstPort, kPortCount, 0);  // the workload gets no access to the ports
  }

  try {
    init::apply_rlimits(w.rlimits);
    if (w.no_new_privileges) init::set_no_new_privileges();
  } catch (const init::Error& e) {
    child_fail(126, e.what());
  }
  if (::setgroups(w.user.groups.size(), w.user.groups.data()) != 0)
    child_fail(126, "setgroups: " + errno_text(errno));
  if (::setgid(w.user.gid) != 0)
    child_fail(126, "setgid " + std::to_string(w.user.gid) + ": " + errno_text(errno));
  if (::setuid(w.user.uid) != 0)
    child_fail(126, "setuid " + std::to_string(w.user.uid) + ": " + errno_text(errno));
  if (!in_workdir && ::chdir(w.workdir.c_str()) != 0)
    child_fail(126, "chdir to " + w.workdir + ": " + errno_text(errno));

  std::string path_env = init::env_get(w.env, "PATH").value_or(std::string(init::kDefaultPath));
  auto found = init::find_executable("/", w.argv[0], path_env, w.workdir);
  if (auto* f = std::get_if<init::ExecFailure>(&found)) child_fail(f->status, f->message);
  const std::string& path = std::get<std::string>(found);

  std::vector<char*> argv, envp;
  for (const auto& a : w.argv) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  for (const auto& e : w.env) envp.push_back(const_cast<char*>(e.c_str()));
  envp.push_back(nullptr);
  ::execve(path.c_str(), argv.data(), envp.data());
  auto f = init::exec_failure(path, errno);
  child_fail(f.status, f.message);
}

unsigned char wait_status_byte(int status) {
  if (WIFEXITED(status)) return static_cast<unsigned char>(WEXITSTATUS(status));
  if (WIFSIGNALED(status)) return static_cast<unsigned char>(128 + WTERMSIG(status));
  return 255;
}

// Runs the workload to its end as PID 1: reaps every child, forwards signals. Returns the exit
// status byte.
unsigned char supervise(Workload& w, int stop_signal) {
  sigset_t set = supervised_signals();
  struct sigaction sa {};
  sa.sa_handler = noop_handler;
  sigemptyset(&sa.sa_mask);
  for (int s : kForwarded) ::sigaction(s, &sa, nullptr);
  ::sigaction(SIGCHLD, &sa, nullptr);
  ::sigaction(SIGPWR, &sa, nullptr);
  ::sigprocmask(SIG_BLOCK, &set, nullptr);

  const std::string tty = w.tty ? console_tty_device() : std::string();
  if (w.tty) apply_window_size(tty);  // before the workload starts, so it reads the right size
  int relay_control = -1;
  if (w.interactive && !w.tty) {
    int data[2], control[2];
    if (::pipe2(data, O_CLOEXEC) != 0 || ::pipe2(control, O_CLOEXEC) != 0)
      fail(kFailSpawn, "the stdin pipe", errno_text(errno));
    pid_t relay = ::fork();
    if (relay < 0) fail(kFailSpawn, "starting the stdin relay", errno_text(errno));
    if (relay == 0) {
      ::close(data[0]);
      ::close(control[1]);
      stdin_relay(0, data[1], control[0]);
    }
    ::close(data[1]);
    ::close(control[0]);
    w.stdin_fd = data[0];
    relay_control = control[1];
  }
  // wait_for_start: the pipe the workload waits on; its write end goes to the agent alone.
  int gate[2] = {-1, -1};
  if (w.wait_for_start && ::pipe2(gate, O_CLOEXEC) != 0)
    fail(kFailSpawn, "the workload's start pipe", errno_text(errno));
  pid_t pid = ::fork();
  if (pid < 0) fail(kFailSpawn, "starting the workload", errno_text(errno));
  if (pid == 0) {
    reset_workload_signals();
    if (w.wait_for_start) {
      ::close(gate[1]);
      wait_for_start(gate[0]);
    }
    exec_workload(w);
  }
  if (w.stdin_fd >= 0) ::close(w.stdin_fd);
  if (gate[0] >= 0) ::close(gate[0]);
  // The exec agent (docs/guest-abi.md §6), after the workload so that it knows its pid. Its exit
  // and its children's are reaped below like any orphan's; only `pid` ends the VM.
  pid_t agent = ::fork();
  if (agent < 0) warn("starting the exec agent: " + errno_text(errno));
  if (agent == 0) {
    if (g_ports) ::ioperm(kFirstPort, kPortCount, 0);
    if (relay_control >= 0) ::close(relay_control);
    init::AgentContext ctx;
    ctx.workload_pid = pid;
    ctx.stop_signal = stop_signal;
    ctx.expected = w.agent_signals;
    ctx.config_env = w.config_env;
    ctx.hostname = w.hostname;
    ctx.user = w.user_spec;
    ctx.workdir = w.workdir;
    if (gate[1] >= 0) {
      try {
        ctx.start.emplace(gate[1]);
      } catch (const Error& e) {
        // Without the gate the workload could never start: it sees end of file instead.
        warn(std::string("exec agent: ") + e.what());
        ::close(gate[1]);
      }
    }
    init::run_agent(ctx);
  }
  if (gate[1] >= 0) {
    ::close(gate[1]);
    if (agent > 0) port_write(kBootMarkPort, kMarkWorkloadCreated);
  }

  // The SIGNAL port is looked at every kSignalPollNs unless the host sends its signals through
  // the agent instead (a detached VM: no wake-ups while it idles). Should the agent end, the
  // port is all there is again.
  bool poll_port = g_ports && !(w.agent_signals && agent > 0 && !w.tty && !w.interactive);
  unsigned char result = 0;
  bool done = false;
  while (!done) {
    siginfo_t si{};
    int sig;
    if (poll_port) {
      // The host cannot raise a signal in the guest directly; it leaves one on the SIGNAL port,
      // which we look at between waits.
      const struct timespec poll_every { 0, kSignalPollNs };
      sig = ::sigtimedwait(&set, &si, &poll_every);
      if (sig < 0 && errno == EAGAIN) {
        int req = port_signal_request();
        if (req == -1)
          ::kill(pid, stop_signal);
        else if (req == -2 && w.tty)
          apply_window_size(tty);
        else if (req == -3 && relay_control >= 0) {
          uint32_t n = inl(kStdinBytesPort);
          (void)!::write(relay_control, &n, sizeof n);
          ::close(relay_control);
          relay_control = -1;
        } else if (req > 0)
          ::kill(pid, req);
        continue;
      }
    } else {
      sig = ::sigwaitinfo(&set, &si);
    }
    if (sig < 0) continue;
    if (sig == SIGCHLD) {
      int status = 0;
      pid_t r;
      while ((r = ::waitpid(-1, &status, WNOHANG)) > 0) {
        if (r == pid) {
          result = wait_status_byte(status);
          done = true;
        } else if (r == agent && g_ports && !poll_port) {
          warn("the exec agent ended; the host's signals come through the SIGNAL port again");
          poll_port = true;
        }
      }
    } else if (sig == SIGPWR) {
      ::kill(pid, stop_signal);  // a stop request: the image's StopSignal
    } else {
      ::kill(pid, sig);
    }
  }
  // As when a container's main process exits: everything else goes with it.
  ::kill(-1, SIGKILL);
  while (true) {
    pid_t r = ::waitpid(-1, nullptr, 0);
    if (r < 0 && errno != EINTR) break;
  }
  return result;
}

// The image's program (Entrypoint/Cmd as the image gives them), its interpreters and the shared
// libraries they need, read before the snapshot point so that every VM resumed from the snapshot
// finds their pages in its memory. A hint: nothing here fails the boot.
void warm_image_program() {
  try {
    uint64_t budget = init::kMaxWarmBytes;
    for (const std::string& f : init::warm_files("/", load_config()))
      budget -= init::read_through(f, budget);
  } catch (...) {  // an image without a config fails later, where a cold boot would
  }
}

// Before a snapshot's point, what every VM resumed from it would otherwise do first and the
// same way each time: each guest page a resumed VM touches for the first time costs it a fault
// into the snapshot's memory, and a page of code not yet read costs it a disk read as well.
// The init's own code that runs after the point comes from the page cache; lo is up; /etc and
// its generated files exist, for each run to write in place (not in a root shared from the
// host: nothing is written there); the second serial port is open for the workload's stderr
// (closed again if the run asks for a tty).
void prepare_restores(bool share_root) {
  init::read_through("/proc/self/exe", init::kMaxWarmBytes);
  bring_up_loopback();
  if (!share_root) create_etc_placeholders();
  g_stderr_port = open_stderr_port();
}

unsigned char run() {
  const bool share_root = enter_root_share();
  mount_api_filesystems();
  const std::string cmdline = read_cmdline();
  const bool snapshot = snapshot_mode(cmdline);
  // The snapshot point (docs/snapshots.md): nothing a run changes has been read yet, and nothing
  // random drawn (the hostname, boot_id: the kernel makes it at its first read). Every restore
  // goes on from here with its own overrides disk. Before it, the image's own program is read
  // into the page cache the snapshot keeps.
  if (snapshot) {
    if (!share_root) warm_image_program();
    prepare_restores(share_root);
    port_write(kBootMarkPort, kMarkSnapshotPoint);
  }
  ::reboot(RB_DISABLE_CAD);  // ctrl-alt-del becomes SIGINT to us, forwarded like any other

  guestabi::RunOverrides overrides = load_overrides(cmdline, snapshot);
  apply_fresh_inputs(overrides);
  // A shared host directory's own /.img2vm is not ours: its config comes with the overrides.
  guestabi::RuntimeConfig image = overrides.image ? *overrides.image
                                  : share_root    ? guestabi::RuntimeConfig{}
                                                  : load_config();
  guestabi::RuntimeConfig cfg = init::apply_overrides(image, overrides);
  mount_overrides(overrides.mounts);  // before User and WorkingDir, which may lie in a mount
  for (const auto& m : overrides.mounts)
    if (m.type == guestabi::MountSpec::Type::kFile) g_file_mounts.push_back(m.target);

  std::string hostname = cfg.hostname.empty() ? random_hostname() : cfg.hostname;
  if (!init::valid_hostname(hostname))
    fail(kFailHostname, "hostname \"" + hostname + "\"", "is not a valid host name");
  if (::sethostname(hostname.data(), hostname.size()) != 0)
    fail(kFailHostname, "setting hostname " + hostname, errno_text(errno));
  bring_up_loopback();
  if (overrides.net) {
    try {
      init::configure_interface(*overrides.net);
    } catch (const Error& e) {
      fail(kFailNetwork, "network", e.what());
    }
  }
  write_etc_files(hostname, overrides.dns, overrides.net ? overrides.net->address : std::string());
  set_rlimits();

  Workload w;
  w.tty = overrides.tty;
  w.interactive = overrides.interactive;
  w.agent_signals = overrides.agent_signals;
  w.wait_for_start = overrides.wait_for_start;
  try {
    w.user = init::resolve_user("/", cfg.user);
  } catch (const Error& e) {
    fail(kFailUser, "user \"" + cfg.user + "\"", e.what());
  }
  try {
    w.argv = init::command_line(cfg);
  } catch (const Error& e) {
    fail(kFailCommand, "starting the workload", e.what());
  }
  w.user.groups = init::with_extra_groups(std::move(w.user.groups), overrides.extra_groups);
  w.rlimits = overrides.rlimits;
  w.no_new_privileges = overrides.no_new_privileges;
  w.workdir = prepare_workdir(cfg.working_dir);
  w.env = init::workload_env(cfg.env, hostname, w.tty, w.user.home);
  w.config_env = cfg.env;
  w.hostname = hostname;
  w.user_spec = cfg.user;

  int stop_signal = SIGTERM;
  if (!cfg.stop_signal.empty()) {
    if (auto s = init::parse_signal(cfg.stop_signal))
      stop_signal = *s;
    else
      warn("unknown StopSignal \"" + cfg.stop_signal + "\", using SIGTERM");
  }

  setup_console(w.tty);
  return supervise(w, stop_signal);
}

}  // namespace

int main() {
  if (::getpid() != 1) {
    say("must run as PID 1 (the kernel's init=" + std::string(kInitPath) + ")");
    return 2;
  }
  g_ports = ::ioperm(kFirstPort, kPortCount, 1) == 0;
  int ports_errno = errno;
  port_write(kBootMarkPort, kMarkInitStarted);
  open_console_fds();
  if (!g_ports)
    warn("no access to the status ports (ioperm: " + errno_text(ports_errno) +
         "; the kernel needs CONFIG_X86_IOPL_IOPERM): the exit status cannot reach the host");
  unsigned char status = 0;
  try {
    status = run();
  } catch (const InitFailure& f) {
    say(f.line);
    end_vm(kInitFailPort, f.code);
  } catch (const std::exception& e) {
    say(std::string("internal error: ") + e.what());
    end_vm(kInitFailPort, kFailInternal);
  }
  end_vm(kExitPort, status);
}
