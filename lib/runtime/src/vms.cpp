#include "img2vm/runtime/vms.hpp"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <ctime>
#include <nlohmann/json.hpp>

#include "img2vm/base/error.hpp"
#include "img2vm/runtime/agent_client.hpp"
#include "random_id.hpp"

namespace img2vm::runtime {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr const char* kState = "state.json";
constexpr const char* kSpec = "spec.json";
constexpr const char* kExit = "exit.json";
constexpr size_t kMaxNameBytes = 128;
// How long rm -f and stop wait for a killed VM's monitor to record its end.
constexpr std::chrono::seconds kKillWait{30};
// How long the guest's exec agent gets to take a stop or a signal before the VMM is signalled
// instead.
constexpr std::chrono::seconds kAgentWait{10};

bool is_id(const std::string& s) {
  return s.size() == 64 && s.find_first_not_of("0123456789abcdef") == std::string::npos;
}

// A generated name: adjective_noun, then with a number when taken.
std::string generated_name(const std::vector<std::string>& taken, const std::string& id) {
  static const char* adj[] = {"amber",  "brisk", "calm",  "deft",  "eager", "fond",
                              "gentle", "hardy", "ivory", "jolly", "keen",  "lucid",
                              "merry",  "noble", "quiet", "rapid", "sunny", "tidy"};
  static const char* noun[] = {"alder", "birch",  "cedar",  "dune",    "elm",     "fjord",
                               "glade", "heath",  "inlet",  "juniper", "kestrel", "lagoon",
                               "maple", "nebula", "orchid", "pine",    "quartz",  "reef"};
  const size_t na = std::size(adj), nn = std::size(noun);
  unsigned v = std::stoul(id.substr(0, 6), nullptr, 16);
  std::string base = std::string(adj[v % na]) + "_" + noun[(v / na) % nn];
  std::string n = base;
  for (int i = 2; std::find(taken.begin(), taken.end(), n) != taken.end(); ++i)
    n = base + std::to_string(i);
  return n;
}

json to_json(const ProcessRef& p) { return {{"pid", p.pid}, {"start_time", p.start_time}}; }

ProcessRef process_from(const json& j) {
  ProcessRef p;
  if (!j.is_object()) return p;
  if (j.contains("pid") && j["pid"].is_number_integer()) p.pid = j["pid"].get<pid_t>();
  if (j.contains("start_time") && j["start_time"].is_number_unsigned())
    p.start_time = j["start_time"].get<uint64_t>();
  if (p.pid <= 0) p = {};
  return p;
}

json to_json(const VmRecord& r) {
  json j = {{"Id", r.id},
            {"Name", r.name},
            {"Image", r.image},
            {"Command", r.command},
            {"Created", r.created},
            {"Status", to_string(r.status)},
            {"Detached", r.detached},
            {"AutoRemove", r.auto_remove},
            {"StopTimeoutMs", r.stop_timeout.count()},
            {"VmmProgram", r.vmm_program},
            {"Monitor", to_json(r.monitor)},
            {"Vmm", to_json(r.vmm)},
            {"StartedAt", r.started},
            {"FinishedAt", r.finished},
            {"ExitReason", r.exit_reason},
            {"Error", r.error},
            {"VsockSocket", r.vsock_socket}};
  if (!r.bundle.empty()) j["Bundle"] = r.bundle;
  if (!r.annotations.empty()) j["Annotations"] = r.annotations;
  if (r.pod_sandbox) j["PodSandbox"] = true;
  j["ExitCode"] = r.exit_code ? json(*r.exit_code) : json(nullptr);
  return j;
}

std::string str(const json& j, const char* k) {
  return j.contains(k) && j[k].is_string() ? j[k].get<std::string>() : std::string();
}

VmRecord record_from(const json& j) {
  VmRecord r;
  r.id = str(j, "Id");
  r.name = str(j, "Name");
  r.image = str(j, "Image");
  if (j.contains("Command") && j["Command"].is_array())
    for (const auto& w : j["Command"])
      if (w.is_string()) r.command.push_back(w.get<std::string>());
  r.created = str(j, "Created");
  const std::string st = str(j, "Status");
  r.status = st == "running"  ? VmStatus::kRunning
             : st == "exited" ? VmStatus::kExited
                              : VmStatus::kCreated;
  r.detached = j.value("Detached", false);
  r.auto_remove = j.value("AutoRemove", false);
  if (j.contains("StopTimeoutMs") && j["StopTimeoutMs"].is_number_unsigned())
    r.stop_timeout = std::chrono::milliseconds(
        std::min<uint64_t>(j["StopTimeoutMs"].get<uint64_t>(), uint64_t(1) << 40));
  r.vmm_program = str(j, "VmmProgram");
  if (j.contains("Monitor")) r.monitor = process_from(j["Monitor"]);
  if (j.contains("Vmm")) r.vmm = process_from(j["Vmm"]);
  r.started = str(j, "StartedAt");
  r.finished = str(j, "FinishedAt");
  if (j.contains("ExitCode") && j["ExitCode"].is_number_integer())
    r.exit_code = j["ExitCode"].get<int>();
  r.exit_reason = str(j, "ExitReason");
  r.error = str(j, "Error");
  r.vsock_socket = str(j, "VsockSocket");
  r.bundle = str(j, "Bundle");
  if (j.contains("Annotations") && j["Annotations"].is_object())
    for (const auto& [k, v] : j["Annotations"].items())
      if (v.is_string()) r.annotations[k] = v.get<std::string>();
  r.pod_sandbox = j.contains("PodSandbox") && j["PodSandbox"].is_boolean() && j["PodSandbox"];
  return r;
}

void write_record(const fs::path& dir, const VmRecord& r) {
  write_file_atomic(dir / kState, json(to_json(r)).dump(2) + "\n", 0600);
}

// The directory `fd` is still the one at `path` (not removed or replaced meanwhile).
bool same_dir(int fd, const fs::path& path) {
  struct stat a {
  }, b{};
  return ::fstat(fd, &a) == 0 && ::stat(path.c_str(), &b) == 0 && a.st_dev == b.st_dev &&
         a.st_ino == b.st_ino && a.st_nlink > 0;
}

// Sends `sig` (0: the image's StopSignal) to the workload of `r` through its guest agent;
// false when the VM has no agent to take it (no vsock device, or nothing answers in time).
bool deliver_through_agent(const VmRecord& r, int sig) {
  if (r.vsock_socket.empty()) return false;
  try {
    if (sig == 0)
      stop_workload(r.vsock_socket, kAgentWait);
    else
      signal_workload(r.vsock_socket, sig, kAgentWait);
    return true;
  } catch (const Error&) {
    return false;
  }
}

void signal_process(const ProcessRef& p, int sig) {
  UniqueFd fd = p.pidfd();
  if (!fd) return;
  if (::syscall(SYS_pidfd_send_signal, fd.get(), sig, nullptr, 0) != 0 && errno != ESRCH)
    throw_errno("cannot signal process " + std::to_string(p.pid));
}

}  // namespace

// The flock of a VM's directory, held while its record changes.
class VmLock {
 public:
  VmLock(const VmStore& s, const std::string& id) {
    if (!is_id(id)) return;
    const fs::path d = s.vm_dir(id);
    fd_ = UniqueFd(::open(d.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
    if (!fd_) return;
    while (::flock(fd_.get(), LOCK_EX) != 0)
      if (errno != EINTR) throw_errno("lock " + d.string());
    if (!same_dir(fd_.get(), d)) fd_.reset();
  }
  // The VM still exists (and is locked).
  explicit operator bool() const { return bool(fd_); }

 private:
  UniqueFd fd_;
};

bool is_vm_name(const std::string& s) {
  auto ok = [](char c) { return std::isalnum(static_cast<unsigned char>(c)) != 0; };
  if (s.empty() || s.size() > kMaxNameBytes || !ok(s[0])) return false;
  return std::all_of(s.begin() + 1, s.end(),
                     [&](char c) { return ok(c) || c == '_' || c == '.' || c == '-'; });
}

void check_vm_name(const std::string& name) {
  if (!is_vm_name(name))
    throw Error(ErrorKind::kInvalidArgument,
                "Invalid container name (" + name.substr(0, 200) +
                    "), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed (at most 128 bytes)");
}

const char* to_string(VmStatus s) noexcept {
  switch (s) {
    case VmStatus::kCreated:
      return "created";
    case VmStatus::kRunning:
      return "running";
    case VmStatus::kExited:
      return "exited";
  }
  return "created";
}

ProcessRef ProcessRef::of(pid_t pid) {
  ProcessRef p;
  if (pid <= 0) return p;
  std::string stat;
  try {
    stat = read_file("/proc/" + std::to_string(pid) + "/stat", 4096);
  } catch (const Error&) {
    return p;
  }
  // pid (comm) state ... : comm may hold anything, so fields count from the last ')'.
  size_t close = stat.rfind(')');
  if (close == std::string::npos) return p;
  std::vector<std::string> f;
  size_t i = close + 2;
  while (i < stat.size() && f.size() < 20) {
    size_t e = stat.find(' ', i);
    if (e == std::string::npos) e = stat.size();
    f.push_back(stat.substr(i, e - i));
    i = e + 1;
  }
  // f[0] is field 3 (state); field 22 (starttime) is f[19].
  if (f.size() < 20 || f[0] == "Z" || f[0] == "X") return p;
  p.pid = pid;
  p.start_time = std::strtoull(f[19].c_str(), nullptr, 10);
  return p;
}

bool ProcessRef::alive() const {
  if (pid <= 0) return false;
  ProcessRef now = of(pid);
  return now.pid == pid && now.start_time == start_time;
}

UniqueFd ProcessRef::pidfd() const {
  if (pid <= 0) return UniqueFd();
  UniqueFd fd(static_cast<int>(::syscall(SYS_pidfd_open, pid, 0)));
  // Checked after opening: the descriptor then refers to this very process.
  if (fd && !alive()) fd.reset();
  return fd;
}

std::string now_rfc3339_nano() {
  struct timespec ts {};
  ::clock_gettime(CLOCK_REALTIME, &ts);
  std::tm tm{};
  ::gmtime_r(&ts.tv_sec, &tm);
  char buf[64];
  size_t n = std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%S", &tm);
  std::snprintf(buf + n, sizeof buf - n, ".%09ldZ", static_cast<long>(ts.tv_nsec));
  return buf;
}

VmStore::VmStore(fs::path dir) : dir_(std::move(dir)) {
  std::error_code ec;
  fs::create_directories(dir_, ec);
  if (ec) throw Error(ErrorKind::kIo, "cannot create " + dir_.string() + ": " + ec.message());
}

UniqueFd VmStore::lock_store() const {
  UniqueFd fd = open_file(dir_ / ".lock", O_RDWR | O_CREAT, 0600);
  while (::flock(fd.get(), LOCK_EX) != 0)
    if (errno != EINTR) throw_errno("lock " + (dir_ / ".lock").string());
  return fd;
}

std::optional<VmRecord> VmStore::read(const std::string& id) const {
  if (!is_id(id)) return std::nullopt;
  std::string text;
  try {
    text = read_file(vm_dir(id) / kState, kMaxStateBytes);
  } catch (const Error&) {
    return std::nullopt;  // being created or removed, or not a VM's directory
  }
  json j = json::parse(text, nullptr, false);
  if (!j.is_object()) return std::nullopt;
  VmRecord r = record_from(j);
  if (r.id != id) return std::nullopt;
  return r;
}

VmRecord VmStore::observe(VmRecord r) const {
  if (r.status == VmStatus::kExited || r.monitor.pid <= 0 || r.monitor.alive()) return r;
  // The monitor is gone without recording an end: record it now (under the VM's lock, against
  // what is stored then).
  auto changed = update(r.id, [&](VmRecord& s) {
    if (s.status == VmStatus::kExited || s.monitor.pid <= 0 || s.monitor.alive()) return;
    s.status = VmStatus::kExited;
    s.finished = now_rfc3339_nano();
    if (s.pod_sandbox) {  // not this process's child: its status went to its reaper
      s.exit_reason = "the pod sandbox's process (pid " + std::to_string(s.monitor.pid) + ") ended";
      return;
    }
    // An attached run's VMM leaves its end in exit.json (img2vm run --name).
    std::string text;
    try {
      text = read_file(vm_dir(s.id) / kExit, 4096);
    } catch (const Error&) {
    }
    json j = json::parse(text, nullptr, false);
    if (j.is_object() && j.contains("ExitCode") && j["ExitCode"].is_number_integer()) {
      s.exit_code = j["ExitCode"].get<int>();
      s.exit_reason = str(j, "Reason").substr(0, 1024);
      return;
    }
    s.exit_code = 255;
    s.exit_reason = "the VMM is gone; no exit status was recorded (its monitor, pid " +
                    std::to_string(s.monitor.pid) + ", ended)";
  });
  return changed ? *changed : r;
}

std::optional<VmRecord> VmStore::update(const std::string& id,
                                        const std::function<void(VmRecord&)>& change) const {
  VmLock lock(*this, id);
  if (!lock) return std::nullopt;
  auto r = read(id);
  if (!r) return std::nullopt;
  change(*r);
  write_record(vm_dir(id), *r);
  return r;
}

namespace {

void conflict(const std::vector<VmRecord>& all, const std::string& name) {
  for (const auto& v : all)
    if (v.name == name)
      throw Error(ErrorKind::kInvalidArgument,
                  "Conflict. The container name \"/" + name +
                      "\" is already in use by container \"" + v.id +
                      "\". You have to remove (or rename) that container to be able to reuse "
                      "that name.");
}

}  // namespace

void VmStore::check_name_free(const std::string& name) const { conflict(list(), name); }

VmRecord VmStore::create(const VmCreate& c, const std::string& spec) {
  if (!c.name.empty()) check_vm_name(c.name);
  UniqueFd lock = lock_store();
  std::vector<VmRecord> all = list();
  if (all.size() >= kMaxVms)
    throw Error(ErrorKind::kLimit, "the store holds " + std::to_string(all.size()) +
                                       " VMs, the most it keeps: remove some (img2vm rm)");
  VmRecord r;
  r.id = detail::random_id();
  std::vector<std::string> taken;
  for (const auto& v : all) taken.push_back(v.name);
  if (!c.name.empty()) conflict(all, c.name);
  r.name = c.name.empty() ? generated_name(taken, r.id) : c.name;
  r.image = c.image;
  r.command = c.command;
  r.created = now_rfc3339_nano();
  r.detached = c.detached;
  r.auto_remove = c.auto_remove;
  r.stop_timeout = c.stop_timeout;
  r.vmm_program = c.vmm_program;
  r.vsock_socket = (vm_dir(r.id) / "vsock.sock").string();
  r.bundle = c.bundle;
  r.annotations = c.annotations;
  r.pod_sandbox = c.pod_sandbox;
  if (json(to_json(r)).dump(2).size() + 1024 > kMaxStateBytes)
    throw Error(ErrorKind::kLimit,
                "the VM's record (its command, image and annotations) would be "
                "larger than " +
                    std::to_string(kMaxStateBytes / 1024) + " KiB");
  // Made whole under a temporary name, then renamed into place: never seen half made.
  TempDir tmp(".new", dir_);
  write_file_atomic(tmp.path() / kSpec, spec, 0600);
  write_record(tmp.path(), r);
  if (::chmod(tmp.path().c_str(), 0700) != 0) throw_errno("chmod " + tmp.path().string());
  if (::rename(tmp.path().c_str(), vm_dir(r.id).c_str()) != 0)
    throw_errno("create " + vm_dir(r.id).string());
  tmp.release();
  return r;
}

std::optional<VmRecord> VmStore::find(const std::string& ref) const {
  if (ref.empty()) return std::nullopt;
  if (is_id(ref))
    if (auto r = read(ref)) return observe(*r);
  std::vector<VmRecord> all = list();
  for (const auto& r : all)
    if (r.name == ref) return r;
  const bool hex = ref.find_first_not_of("0123456789abcdef") == std::string::npos;
  if (!hex) return std::nullopt;
  std::optional<VmRecord> match;
  for (const auto& r : all) {
    if (r.id.rfind(ref, 0) != 0) continue;
    if (match)
      throw Error(ErrorKind::kInvalidArgument,
                  "multiple IDs found with provided prefix: " + ref.substr(0, 64));
    match = r;
  }
  return match;
}

std::optional<VmRecord> VmStore::find_name(const std::string& name) const {
  for (auto& r : list())
    if (r.name == name) return r;
  return std::nullopt;
}

VmRecord VmStore::get(const std::string& ref) const {
  auto r = find(ref);
  if (!r) throw Error(ErrorKind::kNotFound, "No such VM: " + ref.substr(0, 200));
  return *r;
}

std::vector<VmRecord> VmStore::list() const {
  std::vector<VmRecord> out;
  std::error_code ec;
  size_t seen = 0;
  for (auto it = fs::directory_iterator(dir_, ec);
       !ec && it != fs::directory_iterator() && seen < 4 * kMaxVms; it.increment(ec), ++seen) {
    if (out.size() >= kMaxVms) break;
    auto r = read(it->path().filename().string());
    if (!r) continue;
    VmRecord now = observe(*r);
    // An attached `run --rm --name` is kept while it runs (its name taken), and dropped once it
    // has ended.
    if (now.auto_remove && !now.detached && now.status == VmStatus::kExited) {
      try {
        remove(now.id, false);
        continue;
      } catch (const Error&) {
      }
    }
    out.push_back(std::move(now));
  }
  std::sort(out.begin(), out.end(), [](const VmRecord& a, const VmRecord& b) {
    return a.created != b.created ? a.created > b.created : a.id < b.id;
  });
  return out;
}

bool VmStore::wait_ended(const VmRecord& r,
                         std::optional<std::chrono::milliseconds> timeout) const {
  UniqueFd fd = r.monitor.pidfd();
  if (fd) {
    const auto deadline =
        std::chrono::steady_clock::now() + timeout.value_or(std::chrono::hours(0));
    for (;;) {
      int ms = -1;
      if (timeout) {
        auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
            deadline - std::chrono::steady_clock::now());
        ms = static_cast<int>(std::clamp<int64_t>(left.count(), 0, 1 << 30));
      }
      struct pollfd p {
        fd.get(), POLLIN, 0
      };
      int n = ::poll(&p, 1, ms);
      if (n > 0) break;
      if (n == 0) return false;
      if (errno != EINTR) throw_errno("waiting for VM " + r.id);
    }
  }
  return true;
}

void VmStore::stop(const std::string& id, std::chrono::milliseconds timeout) const {
  auto r = find(id);
  if (!r || r->status != VmStatus::kRunning) return;
  // The image's StopSignal through the guest's agent (a detached VM's init does not poll for
  // the VMM's), else SIGTERM to the VMM, which leaves the same request on the SIGNAL port.
  if (!deliver_through_agent(*r, 0)) signal_process(r->vmm, SIGTERM);
  if (wait_ended(*r, timeout)) return;
  signal_process(r->vmm, SIGKILL);
  wait_ended(*r, kKillWait);
}

int parse_signal(const std::string& s) {
  static const std::pair<const char*, int> names[] = {
      {"HUP", SIGHUP},   {"INT", SIGINT},   {"QUIT", SIGQUIT}, {"KILL", SIGKILL},
      {"USR1", SIGUSR1}, {"USR2", SIGUSR2}, {"TERM", SIGTERM}, {"WINCH", SIGWINCH},
      {"ABRT", SIGABRT}, {"ALRM", SIGALRM}, {"CONT", SIGCONT}, {"STOP", SIGSTOP},
      {"TSTP", SIGTSTP}, {"PIPE", SIGPIPE}};
  std::string u;
  for (char c : s) u += static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  if (u.rfind("SIG", 0) == 0) u = u.substr(3);
  for (const auto& [n, v] : names)
    if (u == n) return v;
  if (!u.empty() && u.size() <= 2 && u.find_first_not_of("0123456789") == std::string::npos) {
    int v = std::stoi(u);
    if (v >= 1 && v <= 64) return v;
  }
  throw Error(ErrorKind::kInvalidArgument, "invalid signal: " + s.substr(0, 64));
}

void VmStore::kill(const std::string& id, int sig) const {
  auto r = find(id);
  if (!r) throw Error(ErrorKind::kNotFound, "No such VM: " + id);
  if (sig < 1 || sig > 64)
    throw Error(ErrorKind::kInvalidArgument, "invalid signal: " + std::to_string(sig));
  if (r->status != VmStatus::kRunning)
    throw Error(ErrorKind::kInvalidArgument, "Container " + r->id + " is not running");
  // Any signal but KILL goes to the workload through the guest's agent; KILL ends the VM.
  if (sig != SIGKILL && deliver_through_agent(*r, sig)) return;
  switch (sig) {
    case SIGINT:
    case SIGTERM:
    case SIGHUP:
    case SIGQUIT:
    case SIGUSR1:
    case SIGUSR2:
    case SIGWINCH:
    case SIGKILL:
      break;
    default:
      throw Error(ErrorKind::kInvalidArgument,
                  "signal " + std::to_string(sig) + " (" + ::strsignal(sig) +
                      ") cannot reach this VM's workload: its exec agent does not answer, and "
                      "its VMM relays only HUP, INT, QUIT, TERM, USR1, USR2 and WINCH (KILL ends "
                      "the VM)");
  }
  signal_process(r->vmm, sig);
  if (sig == SIGKILL) wait_ended(*r, kKillWait);
}

int VmStore::wait(const std::string& id) const {
  auto r = find(id);
  if (!r) throw Error(ErrorKind::kNotFound, "No such VM: " + id);
  if (r->status == VmStatus::kRunning) {
    wait_ended(*r, std::nullopt);
    r = find(r->id);
    if (!r) throw Error(ErrorKind::kNotFound, "No such VM: " + id);
  }
  return r->exit_code.value_or(r->status == VmStatus::kExited ? 255 : 0);
}

void VmStore::remove(const std::string& id, bool force) const {
  auto r = find(id);
  std::error_code ec;
  if (!r && is_id(id) && fs::is_directory(fs::symlink_status(vm_dir(id), ec))) {
    // A directory whose record is damaged: removed by its full id all the same.
    r = VmRecord();
    r->id = id;
    r->status = VmStatus::kExited;
  }
  if (!r) throw Error(ErrorKind::kNotFound, "No such VM: " + id);
  if (r->status != VmStatus::kExited && r->monitor.alive()) {
    if (!force)
      throw Error(ErrorKind::kInvalidArgument,
                  "You cannot remove a running container " + r->id +
                      ". Stop the container before attempting removal or force remove");
    signal_process(r->vmm, SIGKILL);
    signal_process(r->monitor, SIGKILL);  // its VMM dies with it (parent-death signal)
    wait_ended(*r, kKillWait);
  }
  // The VM's lock alone: a removal only frees a name, which create's check under the store's
  // lock can live with (and list() removes ended `run --rm` records while create holds it).
  VmLock vm(*this, r->id);
  if (!vm) return;  // removed meanwhile
  // Out of sight at once, then deleted.
  TempDir trash(".rm", dir_);
  if (::rename(vm_dir(r->id).c_str(), (trash.path() / "vm").c_str()) != 0)
    throw_errno("remove VM " + r->id);
}

}  // namespace img2vm::runtime
