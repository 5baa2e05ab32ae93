#include "img2vm/runtime/oci_runtime.hpp"

#include <fcntl.h>
#include <linux/magic.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <nlohmann/json.hpp>
#include <thread>
#include <tuple>

#include "img2vm/base/error.hpp"
#include "img2vm/base/fd.hpp"
#include "img2vm/base/version.hpp"
#include "img2vm/runtime/agent_client.hpp"
#include "img2vm/runtime/kernel.hpp"
#include "img2vm/runtime/root_dir.hpp"
#include "img2vm/vm/net_netns.hpp"

namespace img2vm::runtime {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr std::chrono::seconds kAgentTimeout{30};
constexpr unsigned kMaxCpus = 64;

// The size (rows, columns) of the terminal `fd`, when it knows one.
std::optional<std::pair<uint16_t, uint16_t>> window_of(int fd) {
  struct winsize ws {};
  if (::ioctl(fd, TIOCGWINSZ, &ws) != 0 || ws.ws_row == 0 || ws.ws_col == 0) return std::nullopt;
  return std::make_pair(uint16_t(ws.ws_row), uint16_t(ws.ws_col));
}

// An annotation's value as a number in [lo, hi]; throws naming it.
uint64_t annotation_number(const std::string& value, const char* key, uint64_t lo, uint64_t hi) {
  uint64_t n = 0;
  auto [end, ec] = std::from_chars(value.data(), value.data() + value.size(), n);
  if (value.empty() || ec != std::errc() || end != value.data() + value.size() || n < lo || n > hi)
    throw Error(ErrorKind::kInvalidArgument,
                std::string("config.json: annotation ") + key + ": \"" + value.substr(0, 40) +
                    "\" is not a number from " + std::to_string(lo) + " to " + std::to_string(hi));
  return n;
}

// The copy of a bind mount's source that is a regular file (the engine's /etc/hosts,
// /etc/resolv.conf, /etc/hostname, /run/.containerenv, or a user's `-v FILE:DEST`), for the
// guest init to place at the target (Mount::Type::kFile), with its permission bits and owner.
// The source is untrusted: opened O_PATH first (symlinks followed as mount(2) follows them, and
// nothing opened for reading yet), then only a regular file is reopened, through that very
// descriptor, to read at most kMaxFileMountBytes; `total` adds up all of them. nullopt, with a
// warning, for a source that is missing or a FIFO, device or socket (which a copy cannot stand
// in for); Error(kLimit) naming the mount for one past the bounds.
std::optional<Mount> file_mount(const Mount& m, size_t& total,
                                const std::function<void(const std::string&)>& say) {
  const std::string w = "mounts: " + m.target + ": " + m.source.string();
  UniqueFd path(::open(m.source.c_str(), O_PATH | O_CLOEXEC));
  if (!path) {
    if (errno == ENOENT || errno == ENOTDIR) {
      say(w + " does not exist; not mounted");
      return std::nullopt;
    }
    throw Error(ErrorKind::kIo, "config.json: " + w + ": " + std::strerror(errno));
  }
  struct stat st {};
  if (::fstat(path.get(), &st) != 0)
    throw Error(ErrorKind::kIo, "config.json: " + w + ": " + std::strerror(errno));
  if (!S_ISREG(st.st_mode)) {
    say(w + " is not a directory or a regular file (a FIFO, device or socket cannot be shared " +
        "with a VM); not mounted");
    return std::nullopt;
  }
  auto too_large = [&] {
    return Error(ErrorKind::kLimit, "config.json: " + w + ": larger than " +
                                        std::to_string(guestabi::kMaxFileMountBytes >> 10) +
                                        " KiB, the most a bind-mounted file may hold (it is "
                                        "copied into the VM)");
  };
  if (uint64_t(st.st_size) > guestabi::kMaxFileMountBytes) throw too_large();
  const std::string self = "/proc/self/fd/" + std::to_string(path.get());
  UniqueFd fd(::open(self.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK));
  struct stat again {};
  if (!fd || ::fstat(fd.get(), &again) != 0)
    throw Error(ErrorKind::kIo, "config.json: " + w + ": " + std::strerror(errno));
  if (again.st_dev != st.st_dev || again.st_ino != st.st_ino || !S_ISREG(again.st_mode))
    throw Error(ErrorKind::kIo, "config.json: " + w + ": changed while it was opened");
  Mount f;
  f.type = Mount::Type::kFile;
  f.target = m.target;
  f.read_only = m.read_only;
  f.mode = again.st_mode & 07777;
  f.uid = again.st_uid;
  f.gid = again.st_gid;
  f.content.resize(guestabi::kMaxFileMountBytes + 1);
  size_t got = 0;
  while (got < f.content.size()) {
    ssize_t n = ::read(fd.get(), f.content.data() + got, f.content.size() - got);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) throw Error(ErrorKind::kIo, "config.json: " + w + ": " + std::strerror(errno));
    if (n == 0) break;
    got += size_t(n);
  }
  if (got > guestabi::kMaxFileMountBytes) throw too_large();  // it grew
  f.content.resize(got);
  total += got;
  if (total > guestabi::kMaxFileMountsBytes)
    throw Error(ErrorKind::kLimit, "config.json: " + w +
                                       ": the bind-mounted files add up to more than " +
                                       std::to_string(guestabi::kMaxFileMountsBytes >> 20) +
                                       " MiB, the most a VM takes (they are copied into it)");
  return f;
}

// The bind and tmpfs mounts a VM can give: directories through virtio-fs, tmpfs in guest
// memory, regular files as copies (file_mount). The engine's tmpfs at /dev gives way to the
// init's devtmpfs; its /dev/shm (podman binds a tmpfs of the host's there) is a tmpfs of the
// guest's, as large as the host's: shared memory does not cross a virtio-fs share, and it would
// cost a virtiofsd. The engine's /etc/hosts, /etc/resolv.conf and /etc/hostname are such files:
// the init then generates none of its own there.
std::vector<Mount> vm_mounts(const OciBundle& b,
                             const std::function<void(const std::string&)>& say) {
  std::vector<Mount> out;
  size_t file_bytes = 0;
  for (const Mount& m : b.mounts) {
    if (m.type == Mount::Type::kTmpfs && m.target == "/dev") continue;
    if (m.type == Mount::Type::kBind && m.target == "/dev/shm") {
      Mount shm;
      shm.type = Mount::Type::kTmpfs;
      shm.target = m.target;
      shm.read_only = m.read_only;
      struct statfs st {};
      if (::statfs(m.source.c_str(), &st) == 0 && st.f_type == TMPFS_MAGIC)
        shm.size = uint64_t(st.f_blocks) * uint64_t(st.f_bsize);
      out.push_back(shm);
      continue;
    }
    if (m.type == Mount::Type::kBind) {
      std::error_code ec;
      if (fs::is_directory(m.source, ec)) {
        out.push_back(m);
      } else if (auto f = file_mount(m, file_bytes, say)) {
        out.push_back(std::move(*f));
      }
      continue;
    }
    out.push_back(m);
  }
  return out;
}

// `path` is the network namespace this process is in (an engine's runtime runs in the host's).
bool is_own_netns(const fs::path& path) {
  struct stat a {};
  struct stat own {};
  return ::stat(path.c_str(), &a) == 0 && ::stat("/proc/self/ns/net", &own) == 0 &&
         a.st_dev == own.st_dev && a.st_ino == own.st_ino;
}

// What the pod sandbox's process tells create: its pid, and the errno of joining or making its
// network namespace (0: done).
struct SandboxStarted {
  pid_t pid = 0;
  int error = 0;
};

// The pod sandbox's process (OciRuntime::create): a grandchild in a session of its own, so that
// it is reparented to the nearest subreaper (conmon, the shim), in the namespace `netns` (a
// descriptor; -1: none) or a new one (`new_netns`), with the default action for every signal,
// /dev/null (`devnull`) as its stdin, stdout and stderr, no other descriptors, "/" as its
// directory. Only async-signal-safe calls after the fork. Returns its pid; throws Error with
// `what` when it could not join its namespace.
pid_t start_sandbox_process(int netns, bool new_netns, int devnull, const std::string& what) {
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) throw_errno("pipe");
  UniqueFd rd(fds[0]), wr(fds[1]);
  const pid_t child = ::fork();
  if (child < 0) throw_errno("fork");
  if (child == 0) {
    if (::setsid() < 0) ::_exit(1);
    const pid_t holder = ::fork();
    if (holder != 0) ::_exit(holder < 0 ? 1 : 0);
    SandboxStarted msg{::getpid(), 0};
    if (netns >= 0 && ::setns(netns, CLONE_NEWNET) != 0)
      msg.error = errno;
    else if (netns < 0 && new_netns && ::unshare(CLONE_NEWNET) != 0)
      msg.error = errno;
    struct sigaction dfl {};
    dfl.sa_handler = SIG_DFL;
    for (int sig = 1; sig < NSIG; ++sig) (void)::sigaction(sig, &dfl, nullptr);
    sigset_t none;
    ::sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);
    for (int fd = 0; fd < 3; ++fd) ::dup2(devnull, fd);
    (void)!::chdir("/");
    (void)!::write(wr.get(), &msg, sizeof msg);
    if (msg.error != 0) ::_exit(1);
    ::close_range(3, ~0u, 0);
    ::prctl(PR_SET_NAME, "img2vm-sandbox", 0, 0, 0);
    for (;;) ::pause();
  }
  wr.reset();
  int st = 0;
  while (::waitpid(child, &st, 0) < 0 && errno == EINTR) {
  }
  SandboxStarted msg;
  ssize_t n;
  do {
    n = ::read(rd.get(), &msg, sizeof msg);
  } while (n < 0 && errno == EINTR);
  if (n != ssize_t(sizeof msg) || msg.pid <= 0)
    throw Error(ErrorKind::kIo, "the pod sandbox's process could not be started");
  if (msg.error != 0) {
    errno = msg.error;
    throw_errno(what);
  }
  return msg.pid;
}

// The container's process is the monitor (--pid-file's): it has not stopped before the monitor
// has ended, although the VM's end is recorded before it goes (its virtiofsd are stopped after).
// An engine that hears "stopped" looks for the exit status its conmon or shim writes once it
// has reaped the monitor, and podman gives up on it after a few seconds.
const char* oci_status(const VmRecord& r) {
  switch (r.status) {
    case VmStatus::kCreated:
      return "creating";
    case VmStatus::kRunning:
      return r.started.empty() ? "created" : "running";
    case VmStatus::kExited:
      if (r.monitor.alive()) return r.started.empty() ? "created" : "running";
      return "stopped";
  }
  return "stopped";
}

OciState state_of(const VmRecord& r) {
  OciState s;
  s.id = r.name;
  s.status = oci_status(r);
  if (s.status != "stopped") s.pid = r.monitor.pid;
  s.bundle = r.bundle;
  s.annotations = r.annotations;
  return s;
}

}  // namespace

std::string to_json(const OciState& s) {
  json j = {{"ociVersion", kOciRuntimeSpecVersion},
            {"id", s.id},
            {"status", s.status},
            {"pid", s.pid},
            {"bundle", s.bundle}};
  if (!s.annotations.empty()) j["annotations"] = s.annotations;
  return j.dump(2);
}

std::string oci_features_json() {
  json j = {
      {"ociVersionMin", "1.0.0"},
      {"ociVersionMax", kOciRuntimeSpecVersion},
      {"hooks", json::array()},
      {"mountOptions",
       {"bind", "rbind", "ro", "rw", "size", "mode", "nosuid", "nodev", "noexec", "relatime",
        "strictatime", "private", "rprivate"}},
      {"linux",
       {{"namespaces", {"cgroup", "ipc", "mount", "network", "pid", "user", "uts"}},
        {"capabilities", json::array()},
        {"cgroup", {{"v1", false}, {"v2", false}, {"systemd", false}, {"systemdUser", false}}},
        {"seccomp", {{"enabled", false}}},
        {"apparmor", {{"enabled", false}}},
        {"selinux", {{"enabled", false}}}}},
      {"annotations",
       {{"org.img2vm.runtime.version", std::string(version())},
        {kAnnotationKernel, "the guest kernel (a path on the host)"},
        {kAnnotationMemory, "guest memory in MiB (default: linux.resources.memory.limit, else " +
                                std::to_string(kOciDefaultMemoryMib) + ")"},
        {kAnnotationCpus, "vCPUs (default: linux.resources.cpu, else 1)"}}}};
  return j.dump(2);
}

GuestKernel oci_guest_kernel(const OciBundle& b, const fs::path& kernel_flag) {
  // The first that names a kernel, and how its error names it.
  std::string path, source, named_by;
  if (auto it = b.annotations.find(kAnnotationKernel); it != b.annotations.end()) {
    path = it->second;
    source = "annotation";
    named_by = std::string("config.json: annotation ") + kAnnotationKernel;
  } else if (!kernel_flag.empty()) {
    path = kernel_flag.string();
    source = "--kernel";
    named_by = "img2vm-oci --kernel";
  } else if (const char* e = std::getenv("IMG2VM_KERNEL"); e && *e) {
    path = e;
    source = named_by = "IMG2VM_KERNEL";
  }
  if (!path.empty()) {
    std::error_code ec;
    if (!fs::is_regular_file(path, ec))
      throw Error(ErrorKind::kNotFound,
                  named_by + ": the kernel image " + path.substr(0, 200) + " does not exist");
    return GuestKernel{fs::absolute(path), source, {}};
  }
  auto kernel = find_guest_kernel();
  if (!kernel)
    throw Error(ErrorKind::kNotFound,
                "no guest kernel: build one with `img2vm kernel build`, or name one with the "
                "annotation " +
                    std::string(kAnnotationKernel) +
                    ", img2vm-oci's --kernel (podman --runtime-flag kernel=PATH) or IMG2VM_KERNEL");
  return *kernel;
}

bool is_pod_sandbox(const OciBundle& b) {
  for (const char* key : {kAnnotationCriContainerType, kAnnotationCrioContainerType})
    if (auto it = b.annotations.find(key); it != b.annotations.end()) {
      if (it->second == "sandbox") return true;
      if (it->second == "container") return false;
    }
  if (b.args.empty()) return false;
  const std::string program = fs::path(b.args[0]).filename().string();
  if (program == "pause") return b.args.size() == 1;
  if (program == "catatonit") return b.args.size() == 2 && b.args[1] == "-P";
  return false;
}

MachineOptions oci_machine_options(const OciBundle& b,
                                   const std::function<void(const std::string&)>& warn,
                                   const fs::path& kernel_flag) {
  auto say = [&](const std::string& s) {
    if (warn) warn(s);
  };
  for (const auto& u : b.unhonoured) say(u);
  auto annotation = [&](const char* key) -> const std::string* {
    auto it = b.annotations.find(key);
    return it == b.annotations.end() ? nullptr : &it->second;
  };

  MachineOptions mo;
  mo.kernel = oci_guest_kernel(b, kernel_flag).path;

  RootDirectory root = open_root_directory(b.root, b.root_readonly);
  guestabi::RuntimeConfig rc;
  rc.cmd = b.args;
  rc.env = b.env;
  rc.working_dir = b.cwd;
  rc.user = std::to_string(b.uid) + ":" + std::to_string(b.gid);
  rc.hostname = b.hostname;
  root.config = rc;
  root.config_file = b.dir / "config.json";
  mo.root_dir = std::move(root);
  if (b.additional_gids.size() > guestabi::kMaxExtraGroups)
    throw Error(ErrorKind::kLimit, "config.json: process.user.additionalGids: more than " +
                                       std::to_string(guestabi::kMaxExtraGroups));
  mo.overrides.extra_groups = b.additional_gids;
  for (const OciRlimit& l : b.rlimits) {
    if (!guestabi::rlimit_resource(l.type)) {
      say("process.rlimits: " + l.type + " is not a limit Linux has; not applied");
      continue;
    }
    for (const auto& seen : mo.overrides.rlimits)
      if (seen.type == l.type)
        throw Error(ErrorKind::kInvalidArgument,
                    "config.json: process.rlimits: " + l.type + " twice");
    mo.overrides.rlimits.push_back({l.type, l.soft, l.hard});
  }
  mo.overrides.no_new_privileges = b.no_new_privileges;
  mo.overrides.tty = mo.overrides.interactive = b.terminal;  // the console: create's pty

  mo.overrides.wait_for_start = true;
  mo.overrides.agent_signals = true;
  mo.mounts = vm_mounts(b, say);

  uint64_t mib = kOciDefaultMemoryMib;
  if (b.memory_limit) {
    mib = (*b.memory_limit + (uint64_t(1) << 20) - 1) >> 20;
    if (mib < kOciMinMemoryMib) {
      say("linux.resources.memory.limit: " + std::to_string(mib) + " MiB is below a VM's least, " +
          std::to_string(kOciMinMemoryMib) + " MiB, which it gets");
      mib = kOciMinMemoryMib;
    }
  }
  if (const std::string* a = annotation(kAnnotationMemory))
    mib = annotation_number(*a, kAnnotationMemory, kOciMinMemoryMib, uint64_t(1) << 20);
  mo.memory_mib = mib;
  unsigned cpus = b.cpus.value_or(1);
  if (cpus > kMaxCpus) {
    say("linux.resources.cpu: " + std::to_string(cpus) + " CPUs; a VM gets at most " +
        std::to_string(kMaxCpus));
    cpus = kMaxCpus;
  }
  if (const std::string* a = annotation(kAnnotationCpus))
    cpus = unsigned(annotation_number(*a, kAnnotationCpus, 1, kMaxCpus));
  mo.cpus = std::max(1u, cpus);

  // The engine's namespace (its veth, address and routes, made by CNI or netavark) is the VM's:
  // build_machine's NetnsTap hands the interface to the guest. A namespace of its own (listed
  // without a path) would hold loopback alone, and so does the VM.
  if (!b.network_namespace.empty() && is_own_netns(b.network_namespace)) {
    // A pod's on the host's network: its other containers are given its sandbox's namespace
    // (/proc/PID/ns/net), the host's, whose interface no VM may take.
    mo.network = NetworkMode::kNone;
    say("linux.namespaces: network " + b.network_namespace.string() +
        " is the host's network namespace: a VM cannot share the host's; it has loopback only");
  } else if (!b.network_namespace.empty()) {
    mo.network = NetworkMode::kNetns;
    mo.netns = b.network_namespace;
  } else {
    mo.network = NetworkMode::kNone;
    if (b.host_network)
      say("linux.namespaces: no network namespace (the host's network): a VM cannot share the "
          "host's; it has loopback only");
  }
  mo.defer_shares = true;
  mo.console_out_fd = -1;
  mo.console_err_fd = -1;
  return mo;
}

fs::path OciRuntime::default_root() {
  if (::geteuid() == 0) return "/run/img2vm-oci";
  if (const char* x = std::getenv("XDG_RUNTIME_DIR"); x && *x && fs::path(x).is_absolute())
    return fs::path(x) / "img2vm-oci";
  return "/tmp/img2vm-oci-" + std::to_string(::geteuid());
}

OciRuntime::OciRuntime(fs::path root) : store_(std::move(root)) {}

VmRecord OciRuntime::get(const std::string& id) const {
  auto r = store_.find_name(id);
  if (!r) throw Error(ErrorKind::kNotFound, "container " + id.substr(0, 200) + " does not exist");
  return *r;
}

OciState OciRuntime::create(const OciCreateOptions& o) {
  if (!is_vm_name(o.id))
    throw Error(ErrorKind::kInvalidArgument,
                "invalid container id \"" + o.id.substr(0, 200) +
                    "\": it must match [a-zA-Z0-9][a-zA-Z0-9_.-]* (at most 128 bytes)");
  if (store_.find_name(o.id))
    throw Error(ErrorKind::kInvalidArgument, "container with id exists: " + o.id);
  OciBundle b = load_oci_bundle(o.bundle);
  if (is_pod_sandbox(b)) return create_pod_sandbox(o, b);
  MachineOptions mo = oci_machine_options(b, o.warn, o.kernel);
  // A pod's containers share its namespace, whose interface its first VM (the infra or pause
  // container's) has taken: the others get loopback only, as before img2vm joined namespaces.
  if (mo.network == NetworkMode::kNetns && vm::netns_has_vm(mo.netns)) {
    if (o.warn)
      o.warn("linux.namespaces: network " + mo.netns.string() +
             ": its interface is another VM's (the pod's first container); this VM has loopback "
             "only");
    mo.network = NetworkMode::kNone;
    mo.netns.clear();
  }
  const std::string netns_path = mo.netns.string();
  PreparedMachine pm = build_machine(std::move(mo));
  if (pm.netns && o.warn)
    for (const std::string& n : pm.netns->info().not_carried)
      o.warn("linux.namespaces: network " + netns_path + ": " + n + " is not carried into the VM");
  std::optional<ConsolePty> pty;
  if (b.terminal) {
    if (o.console_socket.empty())
      throw Error(ErrorKind::kInvalidArgument,
                  "process.terminal: a terminal needs --console-socket (where its master goes)");
    pty = open_console_pty();
    send_console_master(o.console_socket, *pty);
    pty->master.reset();  // the engine's now: its end hangs the terminal up
  }
  VmCreate c;
  c.name = o.id;
  c.image = b.root.string();
  c.command = b.args;
  c.bundle = b.dir.string();
  c.annotations = b.annotations;
  DetachedOptions d;
  d.inherit_stdio = o.inherit_stdio;
  if (pty) d.terminal_fd = pty->slave.get();
  VmRecord r;
  try {
    r = start_detached(store_, c, pm, d);
  } catch (...) {
    // A create that fails leaves nothing behind (runc's): the record of a VM that did not
    // start goes too. What the VM said is in the error.
    if (auto left = store_.find_name(o.id)) {
      try {
        store_.remove(left->id, true);
      } catch (const Error&) {
      }
    }
    throw;
  }
  if (!o.pid_file.empty()) {
    try {
      write_file_atomic(o.pid_file, std::to_string(r.monitor.pid), 0644);
    } catch (const Error& e) {
      store_.remove(r.id, true);
      throw e.with_context("--pid-file");
    }
  }
  return state_of(store_.get(r.id));
}

OciState OciRuntime::create_pod_sandbox(const OciCreateOptions& o, const OciBundle& b) {
  const std::string ns = b.network_namespace.string();
  UniqueFd netns;
  if (!b.network_namespace.empty()) {
    netns.reset(::open(b.network_namespace.c_str(), O_RDONLY | O_CLOEXEC));
    if (!netns) throw_errno("linux.namespaces: network " + ns);
  }
  UniqueFd devnull(::open("/dev/null", O_RDWR | O_CLOEXEC));
  if (!devnull) throw_errno("/dev/null");
  if (o.warn)
    o.warn("a pod's sandbox (" + b.args[0].substr(0, 200) +
           "): no VM; a host process holds the pod's namespaces" +
           (ns.empty() ? std::string() : " (network " + ns + ")") +
           ", and the pod's first other container's VM takes its network");
  VmCreate c;
  c.name = o.id;
  c.image = b.root.string();
  c.command = b.args;
  c.bundle = b.dir.string();
  c.annotations = b.annotations;
  c.pod_sandbox = true;
  const VmRecord r = store_.create(c, "{}");
  ProcessRef process;
  try {
    const pid_t pid =
        start_sandbox_process(netns.get(), b.network_namespace.empty() && !b.host_network,
                              devnull.get(), "linux.namespaces: network " + ns);
    process = ProcessRef::of(pid);
    store_.update(r.id, [&](VmRecord& s) {
      s.status = VmStatus::kRunning;
      s.monitor = process;
    });
    if (!o.pid_file.empty()) {
      try {
        write_file_atomic(o.pid_file, std::to_string(pid), 0644);
      } catch (const Error& e) {
        throw e.with_context("--pid-file");
      }
    }
  } catch (...) {
    if (UniqueFd fd = process.pidfd())
      (void)::syscall(SYS_pidfd_send_signal, fd.get(), SIGKILL, nullptr, 0);
    try {
      store_.remove(r.id, true);
    } catch (const Error&) {
    }
    throw;
  }
  return state_of(store_.get(r.id));
}

void OciRuntime::start(const std::string& id) {
  const VmRecord r = get(id);
  const std::string status = oci_status(r);
  if (status == "running")
    throw Error(ErrorKind::kInvalidArgument, "cannot start an already running container");
  if (status == "stopped")
    throw Error(ErrorKind::kInvalidArgument, "cannot start a container that has stopped");
  if (status != "created")
    throw Error(ErrorKind::kInvalidArgument, "cannot start a container that is " + status);
  if (!r.pod_sandbox) start_workload(r.vsock_socket, kAgentTimeout);
  // Running from now on; the monitor records the exec's own time when the guest marks it.
  store_.update(r.id, [](VmRecord& s) {
    if (s.started.empty()) s.started = now_rfc3339_nano();
  });
}

OciState OciRuntime::state(const std::string& id) const { return state_of(get(id)); }

std::vector<OciState> OciRuntime::list() const {
  std::vector<OciState> out;
  for (const auto& r : store_.list()) out.push_back(state_of(r));
  return out;
}

void OciRuntime::kill(const std::string& id, int sig) {
  if (sig < 1 || sig > 64)
    throw Error(ErrorKind::kInvalidArgument, "signal " + std::to_string(sig) + " is not 1-64");
  const VmRecord r = get(id);
  const std::string status = oci_status(r);
  // A VM that has ended while its monitor finishes is running for state but has nothing left
  // to signal; "container not running" is what podman's stop takes for done.
  if (status == "stopped" || status == "creating" || r.status == VmStatus::kExited)
    throw Error(ErrorKind::kInvalidArgument, "container not running");
  if (r.pod_sandbox) {
    UniqueFd fd = r.monitor.pidfd();
    if (!fd) throw Error(ErrorKind::kInvalidArgument, "container not running");
    if (::syscall(SYS_pidfd_send_signal, fd.get(), sig, nullptr, 0) != 0) {
      if (errno == ESRCH) throw Error(ErrorKind::kInvalidArgument, "container not running");
      throw_errno("cannot signal container " + id);
    }
  } else if (sig == SIGKILL)
    store_.kill(r.id, SIGKILL);
  else
    signal_workload(r.vsock_socket, sig, kAgentTimeout);
}

void OciRuntime::remove(const std::string& id, bool force) {
  const VmRecord r = get(id);
  const std::string status = oci_status(r);
  if (status != "stopped" && status != "created" && !force)
    throw Error(ErrorKind::kInvalidArgument,
                "cannot delete container " + id + " that is not stopped: " + status);
  store_.remove(r.id, true);
}

int OciRuntime::exec(const OciExecOptions& o) {
  const VmRecord r = get(o.id);
  const std::string status = oci_status(r);
  if (status != "running")
    throw Error(ErrorKind::kInvalidArgument, "cannot exec in a container that is " + status);
  if (r.pod_sandbox)
    throw Error(ErrorKind::kUnsupported,
                "cannot exec in container " + o.id +
                    ": it is a pod's sandbox, a host process that holds the pod's namespaces "
                    "(no VM)");
  guestabi::ExecRequest req;
  req.args = o.process.args;
  req.env = o.process.env;
  req.user = std::to_string(o.process.uid) + ":" + std::to_string(o.process.gid);
  req.workdir = o.process.cwd;
  req.open_stdin = true;  // whatever stdin the engine gave (/dev/null ends it at once)
  std::optional<ConsolePty> pty;
  if (o.process.terminal) {
    if (o.console_socket.empty())
      throw Error(ErrorKind::kInvalidArgument,
                  "process.terminal: a terminal needs --console-socket (where its master goes)");
    pty = open_console_pty();
    req.tty = true;
    if (auto ws = window_of(pty->slave.get())) std::tie(req.rows, req.cols) = *ws;
  }
  ExecSession session(connect_agent(r.vsock_socket, kAgentTimeout), req);
  if (pty) {
    send_console_master(o.console_socket, *pty);
    pty->master.reset();
  }
  const int in = pty ? pty->slave.get() : 0, out = pty ? in : 1, err = pty ? in : 2;
  const std::pair<int, int> asked{req.rows, req.cols};  // the size the request gave (0: none)
  auto run = [&session, &pty, in, out, err, asked] {
    // The terminal's size as the engine sets it on the master: no one gets its SIGWINCH.
    UniqueFd stop(::eventfd(0, EFD_CLOEXEC));
    std::thread sizes;
    if (pty && stop)
      sizes = std::thread([&session, &stop, fd = pty->slave.get(), asked] {
        auto size = [fd] { return window_of(fd).value_or(std::make_pair(0, 0)); };
        // The engine sets the size once it has the master: after the request, as a resize.
        std::pair<int, int> last = asked;
        struct pollfd pf {
          stop.get(), POLLIN, 0
        };
        while (::poll(&pf, 1, 100) == 0) {
          const std::pair<int, int> now = size();
          if (now != last && now.first > 0)
            session.resize(uint16_t(now.first), uint16_t(now.second));
          last = now;
        }
      });
    struct Join {
      std::thread& t;
      int stop;
      ~Join() {
        if (!t.joinable()) return;
        uint64_t one = 1;
        (void)!::write(stop, &one, sizeof one);
        t.join();
      }
    } join{sizes, stop.get()};
    ExecResult res = session.run(in, out, err);
    if (!res.error.empty()) {
      std::string line = "img2vm-oci: exec: " + res.error + "\n";
      (void)!::write(2, line.data(), line.size());
    }
    return res.status;
  };
  if (!o.detach) return run();

  // Detached: this process is single-threaded here, so the children may go on with the session.
  const pid_t child = ::fork();
  if (child < 0) throw_errno("fork");
  if (child == 0) {
    if (::setsid() < 0) ::_exit(126);
    const pid_t daemon = ::fork();
    if (daemon == 0) {
      int st = 255;
      try {
        st = run();
      } catch (const std::exception& e) {
        std::string line = std::string("img2vm-oci: exec: ") + e.what() + "\n";
        (void)!::write(2, line.data(), line.size());
      }
      ::_exit(st);
    }
    if (daemon < 0) ::_exit(126);
    try {
      if (!o.pid_file.empty()) write_file_atomic(o.pid_file, std::to_string(daemon), 0644);
    } catch (const std::exception&) {
      ::kill(daemon, SIGKILL);
      ::_exit(125);
    }
    ::_exit(0);
  }
  int st = 0;
  while (::waitpid(child, &st, 0) < 0 && errno == EINTR) {
  }
  if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
    throw Error(ErrorKind::kIo, WIFEXITED(st) && WEXITSTATUS(st) == 125
                                    ? "exec: cannot write the pid file " + o.pid_file.string()
                                    : std::string("exec: cannot start the exec's process"));
  return 0;
}

std::vector<pid_t> OciRuntime::pids(const std::string& id) const {
  const VmRecord r = get(id);
  std::vector<pid_t> out;
  for (const ProcessRef& p : {r.monitor, r.vmm})
    if (p.pid > 0 && p.alive()) out.push_back(p.pid);
  return out;
}

}  // namespace img2vm::runtime
