// Detached VMs: start_detached() daemonises the monitor; run_monitor() is the monitor
// (img2vm-vmm --monitor DIR), which runs the VMM, keeps its output and records its end.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <nlohmann/json.hpp>

#include "img2vm/base/error.hpp"
#include "img2vm/runtime/machine.hpp"
#include "img2vm/runtime/vmm.hpp"
#include "img2vm/runtime/vms.hpp"
#include "img2vm/vm/machine_json.hpp"

namespace img2vm::runtime {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

std::string short_id(const std::string& id) { return id.substr(0, 12); }

// How a VMM's end reads: docker's exit code and a reason.
void record_end(VmRecord& r, const ExitStatus& st, const std::string& last_error) {
  r.status = VmStatus::kExited;
  r.finished = now_rfc3339_nano();
  if (st.exited) {
    r.exit_code = st.code;
    r.exit_reason = last_error.empty() ? "exited with code " + std::to_string(st.code) : last_error;
  } else {
    r.exit_code = 128 + st.signal;
    r.exit_reason = "the VMM was killed by signal " + std::to_string(st.signal) + " (" +
                    ::strsignal(st.signal) + ")";
  }
}

// The last "img2vm: ..." line of the VMM's output: why it ended, when it says so.
class ErrorLine {
 public:
  void feed(std::string_view d) {
    for (char c : d) {
      if (c == '\n') {
        if (cur_.rfind("img2vm: ", 0) == 0) last_ = cur_.substr(8);
        cur_.clear();
      } else if (c != '\r' && cur_.size() < 1024) {
        cur_ += c;
      }
    }
  }
  const std::string& last() const { return last_; }

 private:
  std::string cur_, last_;
};

// `spec` with "shares": what the monitor starts (run_monitor, start_shares).
std::string with_shares(const std::string& spec, const std::vector<DeferredShare>& shares) {
  json j = json::parse(spec);
  json& a = j["shares"] = json::array();
  for (const auto& s : shares)
    a.push_back({{"tag", s.tag},
                 {"source", s.options.source.string()},
                 {"read_only", s.options.read_only},
                 {"program", s.options.program.string()}});
  return j.dump();
}

// Starts the virtiofsd of each of the spec's "shares" and gives the machine their devices; the
// spec then has no "shares" (img2vm-vmm takes no such key). Throws Error.
std::vector<Virtiofsd> start_shares(json& spec) {
  std::vector<Virtiofsd> started;
  if (!spec.contains("shares")) return started;
  const json shares = spec["shares"];
  spec.erase("shares");
  auto bad = [] { return Error(ErrorKind::kIntegrity, "spec.json: malformed \"shares\""); };
  if (!shares.is_array()) throw bad();
  json& fs_list = spec["machine"]["fs"];
  if (fs_list.is_null()) fs_list = json::array();
  if (!fs_list.is_array()) throw bad();
  for (const json& s : shares) {
    if (!s.is_object() || !s.value("tag", json()).is_string() ||
        !s.value("source", json()).is_string() || !s.value("read_only", json()).is_boolean() ||
        !s.value("program", json()).is_string())
      throw bad();
    VirtiofsdOptions vo;
    vo.source = s["source"].get<std::string>();
    vo.read_only = s["read_only"].get<bool>();
    vo.program = s["program"].get<std::string>();
    started.push_back(Virtiofsd::start(vo));
    fs_list.push_back({{"tag", s["tag"]}, {"socket_fd", started.back().socket_fd()}});
  }
  return started;
}

// Writes all of `d` to `fd`; false when it cannot (the reader is gone).
bool write_all_to(int fd, std::string_view d) {
  while (!d.empty()) {
    ssize_t n = ::write(fd, d.data(), d.size());
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    d.remove_prefix(size_t(n));
  }
  return true;
}

}  // namespace

VmRecord start_detached(VmStore& store, const VmCreate& c, const std::string& spec,
                        const DetachedOptions& o) {
  VmCreate cc = c;
  cc.detached = true;
  if (cc.vmm_program.empty()) cc.vmm_program = find_vmm_binary().string();
  const fs::path monitor = o.monitor.empty() ? find_vmm_binary() : o.monitor;
  std::string full = o.shares.empty() ? spec : with_shares(spec, o.shares);
  if (!o.netns_restore.empty()) {
    json j = json::parse(full);
    j["netns_restore"] = o.netns_restore;
    full = j.dump();
  }
  if (o.inherit_stdio || o.terminal_fd >= 0) {
    json j = json::parse(full);
    j["forward_output"] = true;
    if (o.terminal_fd >= 0) j["terminal"] = true;
    full = j.dump();
  }
  VmRecord r = store.create(cc, full);
  const fs::path dir = store.vm_dir(r.id);
  auto failed = [&](const std::string& why) {
    store.update(r.id, [&](VmRecord& s) {
      if (s.status == VmStatus::kExited) return;
      s.status = VmStatus::kExited;
      s.exit_code = 125;
      s.error = s.exit_reason = why;
      s.finished = now_rfc3339_nano();
    });
    return Error(ErrorKind::kInvalidArgument, why);
  };

  int p[2];
  if (::pipe2(p, O_CLOEXEC) != 0) throw failed(std::string("pipe: ") + std::strerror(errno));
  UniqueFd ready_rd(p[0]), ready_wr(p[1]);
  UniqueFd devnull = open_file("/dev/null", O_RDWR);
  const std::string dir_arg = dir.string(), fd_arg = std::to_string(ready_wr.get());
  const char* argv[] = {"img2vm-vmm", "--monitor",    dir_arg.c_str(),
                        "--ready-fd", fd_arg.c_str(), nullptr};
  std::vector<int> keep = o.pass_fds;
  keep.push_back(ready_wr.get());
  sigset_t none;
  sigemptyset(&none);
  const bool inherit = o.inherit_stdio;
  const int terminal = o.terminal_fd;

  const pid_t child = ::fork();
  if (child == 0) {
    // Only async-signal-safe calls from here to the exec. A session of its own, and a second
    // fork so that the monitor is not a session leader (it can never get a terminal) and is
    // not this process's child.
    if (::setsid() < 0) ::_exit(126);
    const pid_t g = ::fork();
    if (g != 0) ::_exit(g < 0 ? 126 : 0);
    const int stdio = terminal >= 0 ? terminal : inherit ? -1 : devnull.get();
    if (stdio >= 0 && (::dup2(stdio, 0) < 0 || ::dup2(stdio, 1) < 0 || ::dup2(stdio, 2) < 0))
      ::_exit(126);
    (void)::close_range(3, ~0u, CLOSE_RANGE_CLOEXEC);
    for (int fd : keep) (void)::fcntl(fd, F_SETFD, 0);
    struct sigaction dfl {};
    dfl.sa_handler = SIG_DFL;
    for (int s : {SIGCHLD, SIGPIPE, SIGINT, SIGTERM, SIGHUP, SIGQUIT})
      ::sigaction(s, &dfl, nullptr);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);
    if (::chdir("/") != 0) ::_exit(126);
    ::execv(monitor.c_str(), const_cast<char* const*>(argv));
    ::_exit(127);
  }
  if (child < 0) throw failed(std::string("fork: ") + std::strerror(errno));
  ready_wr.reset();
  int st = 0;
  while (::waitpid(child, &st, 0) < 0 && errno == EINTR) {
  }
  if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) throw failed("cannot start the VM's monitor");

  // One byte once the workload has started or waits for its start; the end of the pipe (the
  // monitor gone, or the VM ended before) otherwise.
  const auto deadline = std::chrono::steady_clock::now() + o.ready_timeout;
  for (;;) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0)
      throw Error(ErrorKind::kIo, "the workload of VM " + short_id(r.id) +
                                      " did not start within " +
                                      std::to_string(o.ready_timeout.count() / 1000) +
                                      " s; it is left running (img2vm logs, img2vm rm -f)");
    struct pollfd pf {
      ready_rd.get(), POLLIN, 0
    };
    int n = ::poll(&pf, 1, static_cast<int>(std::min<int64_t>(left.count(), 1 << 30)));
    if (n < 0 && errno != EINTR) throw_errno("waiting for the VM to start");
    if (n <= 0) continue;
    char b = 0;
    ssize_t got = ::read(ready_rd.get(), &b, 1);
    if (got < 0 && errno == EINTR) continue;
    if (got == 1) return store.get(r.id);
    break;
  }
  auto now = store.find(r.id);
  if (now && now->status == VmStatus::kExited) {
    std::string why = !now->error.empty() ? now->error : now->exit_reason;
    throw Error(ErrorKind::kInvalidArgument, "VM " + short_id(r.id) + " did not start: " + why);
  }
  if (!now) throw Error(ErrorKind::kInvalidArgument, "VM " + short_id(r.id) + " did not start");
  throw failed("the VM's monitor (" + monitor.string() + ") ended before starting the VMM");
}

int run_monitor(const fs::path& vm_dir, int ready_fd) {
  struct sigaction ign {};
  ign.sa_handler = SIG_IGN;
  ::sigaction(SIGPIPE, &ign, nullptr);  // start_detached's end may be gone
  UniqueFd ready(ready_fd);
  VmStore store(vm_dir.parent_path());
  const std::string id = vm_dir.filename().string();
  auto me = store.update(id, [](VmRecord& r) { r.monitor = ProcessRef::of(::getpid()); });
  if (!me) return 125;
  const VmRecord rec = *me;
  auto give_up = [&](const std::string& why) {
    store.update(id, [&](VmRecord& r) {
      r.status = VmStatus::kExited;
      r.exit_code = 125;
      r.error = r.exit_reason = why;
      r.finished = now_rfc3339_nano();
    });
    if (rec.auto_remove) {
      try {
        store.remove(id, false);
      } catch (const Error&) {
      }
    }
    return 125;
  };

  try {
    json spec =
        json::parse(read_file(vm_dir / "spec.json", VmStore::kMaxSpecBytes), nullptr, false);
    if (!spec.is_object() || !spec.contains("machine") || !spec["machine"].is_object())
      return give_up("spec.json: no \"machine\" object");
    int p[2];
    if (::pipe2(p, O_CLOEXEC) != 0) throw_errno("pipe");
    UniqueFd vm_ready_rd(p[0]), vm_ready_wr(p[1]);
    if (::pipe2(p, O_CLOEXEC) != 0) throw_errno("pipe");
    UniqueFd out_rd(p[0]), out_wr(p[1]);
    // The workload's stderr (the VM's second UART) apart from the console.
    if (::pipe2(p, O_CLOEXEC) != 0) throw_errno("pipe");
    UniqueFd err_rd(p[0]), err_wr(p[1]);
    // Before the VMM, after it (declared first: destroyed last).
    std::vector<Virtiofsd> shares = start_shares(spec);
    std::string netns_restore;
    if (spec.contains("netns_restore")) {
      if (spec["netns_restore"].is_string()) netns_restore = spec["netns_restore"];
      spec.erase("netns_restore");  // img2vm-vmm takes no such key
    }
    bool forward = spec.value("forward_output", json(false)) == json(true);
    const bool terminal = spec.value("terminal", json(false)) == json(true);
    spec.erase("forward_output");
    spec.erase("terminal");
    json& m = spec["machine"];
    m["ready_fd"] = vm_ready_wr.get();
    m["console_out_fd"] = 1;
    m["console_err_fd"] = err_wr.get();
    m["console_in_fd"] = terminal ? 0 : -1;  // the VMM's stdin is the monitor's: the terminal
    m["vsock"] = {{"guest_cid", kDetachedGuestCid}, {"uds_path", rec.vsock_socket}};
    // Detached: no terminal, no notices; `stop` decides when the VM is killed, so the VMM's own
    // stop timeout never runs out first.
    json attach =
        spec.contains("attach") && spec["attach"].is_object() ? spec["attach"] : json::object();
    attach["tty"] = terminal;  // the VMM takes the terminal's size at start and on SIGWINCH
    attach["say"] = false;
    attach["json"] = false;
    attach["timings"] = false;
    attach["stop_timeout_ms"] = uint64_t(1) << 40;
    spec["attach"] = attach;

    // The terminal's size as last seen: the engine sets it on the master, and a terminal that
    // is no one's controlling terminal signals no one, so it is looked at every 100 ms. Taken
    // before the VMM starts, which takes it again itself: a change between is not missed.
    auto window = [] {
      struct winsize ws {};
      (void)::ioctl(0, TIOCGWINSZ, &ws);
      return std::make_pair(ws.ws_row, ws.ws_col);
    };
    std::pair<unsigned short, unsigned short> size{};
    if (terminal) size = window();
    VmmChildOptions co;
    co.vmm = rec.vmm_program.empty() ? find_vmm_binary() : fs::path(rec.vmm_program);
    co.pass_fds = {vm_ready_wr.get(), err_wr.get()};
    co.output_fd = out_wr.get();
    co.kill_with_caller = true;  // a monitor killed takes its VM along: never a VM unaccounted
    VmmProcess vmm = VmmProcess::start(spec.dump(), co);
    vm_ready_wr.reset();
    out_wr.reset();
    err_wr.reset();
    // The engine's namespace: the tap is the VMM's alone from now on, so that it goes when the
    // VM ends and the namespace can be restored.
    if (!netns_restore.empty()) {
      const json& net = m.contains("net") ? m["net"] : json();
      if (net.is_object() && net.contains("tap") && net["tap"].is_object() &&
          net["tap"].contains("fd") && net["tap"]["fd"].is_number_integer()) {
        const int tap = net["tap"]["fd"].get<int>();
        if (tap > 2) ::close(tap);
      }
    }
    const ProcessRef vmm_ref = ProcessRef::of(vmm.pid());
    store.update(id, [&](VmRecord& r) {
      r.vmm = vmm_ref;
      if (r.status == VmStatus::kCreated) r.status = VmStatus::kRunning;
    });

    ConsoleLog log(vm_dir);
    ErrorLine err;
    bool started = false;
    bool forward_err = forward;
    char buf[65536];
    // The VMM's output (the console, and the VMM's own messages) goes to the log and, when
    // forwarded, to this process's stdout; the workload's stderr to the log and to its stderr.
    auto on_output = [&](bool drain) {
      for (;;) {
        ssize_t n = ::read(out_rd.get(), buf, sizeof buf);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
          if (n == 0) out_rd.reset();
          return;
        }
        log.write(std::string_view(buf, size_t(n)));
        err.feed(std::string_view(buf, size_t(n)));
        if (forward && !write_all_to(1, std::string_view(buf, size_t(n)))) forward = false;
        if (!drain) return;
      }
    };
    auto on_stderr = [&](bool drain) {
      for (;;) {
        ssize_t n = ::read(err_rd.get(), buf, sizeof buf);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
          if (n == 0) err_rd.reset();
          return;
        }
        log.write(std::string_view(buf, size_t(n)), ConsoleLog::Stream::kStderr);
        if (forward_err && !write_all_to(2, std::string_view(buf, size_t(n)))) forward_err = false;
        if (!drain) return;
      }
    };
    auto on_ready = [&] {
      char b;
      ssize_t n = ::read(vm_ready_rd.get(), &b, 1);
      if (n < 0 && errno == EINTR) return;
      // 'C': the workload waits for its start (img2vm-oci create); 'R': it has started.
      if (n == 1 && b == 'R' && !started) {
        started = true;
        store.update(id, [](VmRecord& r) { r.started = now_rfc3339_nano(); });
      }
      if (n == 1 && (b == 'R' || b == 'C') && ready) {
        (void)!::write(ready.get(), "R", 1);
        ready.reset();
      }
      if (n <= 0) vm_ready_rd.reset();
    };
    for (;;) {
      struct pollfd pf[4] = {{out_rd ? out_rd.get() : -1, POLLIN, 0},
                             {vm_ready_rd ? vm_ready_rd.get() : -1, POLLIN, 0},
                             {vmm.pidfd(), POLLIN, 0},
                             {err_rd ? err_rd.get() : -1, POLLIN, 0}};
      int n = ::poll(pf, 4, terminal ? 100 : -1);
      if (n < 0) {
        if (errno == EINTR) continue;
        throw_errno("poll");
      }
      if (terminal) {
        if (auto now = window(); now != size) {
          size = now;
          (void)::kill(vmm.pid(), SIGWINCH);
        }
      }
      if (pf[0].revents) on_output(false);
      if (pf[3].revents) on_stderr(false);
      if (pf[1].revents) on_ready();
      if (pf[2].revents) break;
    }
    const ExitStatus st = vmm.wait();
    // The VMM may not remove its vsock socket (its seccomp filter): nothing listens there now.
    ::unlink(rec.vsock_socket.c_str());
    // The VM's tap is gone with the VMM: the engine's interface gets its address and routes back
    // before the engine hears of the end (this process's exit) and tears the namespace down. A
    // failure is not the workload's: the engine deletes the namespace all the same.
    // It is done by img2vm-netns, so that this program (img2vm-vmm) does not load libnl.
    if (!netns_restore.empty())
      (void)restore_netns_in_child(netns_restore, std::chrono::seconds(30));
    // What it wrote last: whatever is in the pipes now (its own children may hold them open).
    for (UniqueFd* fd : {&out_rd, &err_rd, &vm_ready_rd})
      if (*fd) (void)::fcntl(fd->get(), F_SETFL, O_NONBLOCK);
    if (out_rd) on_output(true);
    if (err_rd) on_stderr(true);
    while (vm_ready_rd && !started) on_ready();
    int code = 0;
    store.update(id, [&](VmRecord& r) {
      record_end(r, st, err.last());
      if (!started) r.error = r.exit_reason;
      code = r.exit_code.value_or(0);
    });
    if (rec.auto_remove) {
      try {
        store.remove(id, false);
      } catch (const Error&) {
      }
    }
    return code;  // `ready` closes now: start_detached reads the record
  } catch (const std::exception& e) {
    return give_up(e.what());
  }
}

}  // namespace img2vm::runtime
