#include "attached_run.hpp"

#include <signal.h>
#include <sys/ioctl.h>
#include <termios.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <functional>
#include <iostream>
#include <memory>
#include <optional>
#include <thread>

#include "img2vm/base/error.hpp"
#include "img2vm/vm/machine_json.hpp"
#include "img2vm/vm/seccomp.hpp"
#include "terminal.hpp"

namespace img2vm::cli {

LogLevel parse_log_level(const std::string& s) {
  if (s == "error") return LogLevel::kError;
  if (s == "warn" || s == "warning") return LogLevel::kWarn;
  if (s == "info") return LogLevel::kInfo;
  if (s == "debug") return LogLevel::kDebug;
  throw Error(ErrorKind::kInvalidArgument,
              "--log-level: \"" + s + "\" is not one of error, warn, info, debug");
}

const char* to_string(LogLevel l) noexcept {
  switch (l) {
    case LogLevel::kError:
      return "error";
    case LogLevel::kWarn:
      return "warn";
    case LogLevel::kInfo:
      return "info";
    case LogLevel::kDebug:
      return "debug";
  }
  return "warn";
}

namespace {

// -t: the host terminal's size, for the guest's tty.
void pass_window_size(vm::Machine& m, int fd) {
  if (auto ws = window_size(fd)) m.set_window_size(ws->first, ws->second);
}

// Blocks the signals img2vm relays for as long as it lives (threads created meanwhile inherit
// the mask), and restores the previous mask afterwards.
class SignalMask {
 public:
  SignalMask() : set_(relayed_signals()) { ::pthread_sigmask(SIG_BLOCK, &set_, &old_); }
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
//
// `seccomp`: the relay thread takes the main thread's filter first (seccomp.hpp); when it cannot,
// it stops the VM and failure() says why.
class SignalRelay {
 public:
  SignalRelay(vm::Machine& m, const SignalMask& mask, std::chrono::milliseconds stop_timeout,
              bool say, int tty_fd, vm::SeccompMode seccomp)
      : m_(m),
        set_(mask.set()),
        stop_timeout_(stop_timeout),
        say_(say),
        tty_fd_(tty_fd),
        seccomp_(seccomp),
        thread_([this] { loop(); }) {}
  ~SignalRelay() { join(); }
  // Ends the relay; returns why it could not run, or "".
  std::string join() {
    done_ = true;
    if (thread_.joinable()) thread_.join();
    return failure_;
  }

 private:
  void loop() {
    try {
      vm::install_thread_seccomp(vm::ThreadRole::kMain, seccomp_);
    } catch (const std::exception& e) {
      failure_ = std::string("signal relay: ") + e.what();
      m_.stop();
      return;
    }
    using clock = std::chrono::steady_clock;
    std::optional<clock::time_point> deadline;
    while (!done_) {
      struct timespec tick {
        0, 100'000'000
      };
      int sig = ::sigtimedwait(&set_, nullptr, &tick);
      if (deadline && clock::now() >= *deadline) {
        if (say_)
          std::fprintf(stderr,
                       "\r\nimg2vm: the workload did not stop in time; stopping the VM\r\n");
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
  vm::SeccompMode seccomp_;
  std::string failure_;
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
  return "img2vm: timings: vmm setup " + f(ms(t.setup_done)) + ", kernel boot " + f(kernel) +
         ", init " + f(init) + ", to exec " + f(ms(t.workload_exec)) + ", total " + f(ms(t.ended));
}

}  // namespace

sigset_t relayed_signals() {
  sigset_t set;
  sigemptyset(&set);
  for (int s : {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGWINCH}) sigaddset(&set, s);
  return set;
}

namespace {

// The machine for `mc`: its snapshot resumed when it names one, else a cold boot of the same
// config; also when the VMM refuses the snapshot (taken on another CPU, damaged files): the
// guest then boots as it did when the snapshot was taken, and goes on past the same point.
std::unique_ptr<vm::Machine> make_machine(
    vm::MachineConfig mc, const std::function<void(LogLevel, const std::string&)>& log,
    bool& restored) {
  restored = false;
  if (!mc.restore_from.empty()) {
    try {
      auto m = std::make_unique<vm::Machine>(mc);
      restored = true;
      return m;
    } catch (const Error& e) {
      log(LogLevel::kWarn, "snapshot " + mc.restore_from.filename().string() +
                               " not resumed: " + e.what() + "; booting instead");
      mc.restore_from.clear();
    }
  }
  return std::make_unique<vm::Machine>(std::move(mc));
}

}  // namespace

int run_attached(vm::MachineConfig mc, const AttachOptions& o, nlohmann::json summary,
                 bool confine) {
  auto log = [&](LogLevel l, const std::string& line) {
    if (l <= o.level) std::cerr << "img2vm: " << line << "\n";
  };
  SignalMask mask;  // before the Machine, whose threads inherit it
  const vm::SeccompMode seccomp = confine ? mc.seccomp : vm::SeccompMode::kOff;
  const bool from_snapshot = !mc.restore_from.empty();
  bool restored = false;
  std::unique_ptr<vm::Machine> made = make_machine(std::move(mc), log, restored);
  vm::Machine& machine = *made;
  // Every file is open now (/dev/kvm, the kernel, the disks) and the guest has not run yet.
  if (o.run_as) drop_privileges(*o.run_as);
  log(LogLevel::kDebug, "kernel command line: " + machine.cmdline());
  log(LogLevel::kDebug, "kernel entry: " + machine.kernel_format());
  // Published ports: said on stderr (always when the host port was picked here, since there is
  // no `docker port` to ask), and as a JSON event with --json before the VM starts.
  std::vector<vm::PortForward> published = machine.published_ports();
  nlohmann::json ports_json = nlohmann::json::array();
  for (const auto& f : published) ports_json.push_back(vm::to_string(f));
  if (!published.empty()) {
    if (o.json) {
      std::cerr << nlohmann::json{{"event", "published"}, {"ports", ports_json}}.dump() << "\n";
    } else {
      for (const auto& f : published)
        log(o.ports_chosen ? LogLevel::kWarn : LogLevel::kInfo, "published " + vm::to_string(f));
    }
  }
  std::optional<RawTerminal> raw;
  if (o.tty) raw.emplace(STDIN_FILENO);
  vm::MachineResult r;
  std::string relay_failure;
  {
    if (o.tty) pass_window_size(machine, STDIN_FILENO);
    SignalRelay relay(machine, mask, o.stop_timeout, o.say, o.tty ? STDIN_FILENO : -1, seccomp);
    machine.start();
    // From here this thread only waits, reports and tears down (seccomp.hpp, ThreadRole::kMain).
    if (confine) vm::install_thread_seccomp(vm::ThreadRole::kMain, seccomp);
    r = machine.wait();
    relay_failure = relay.join();
  }
  raw.reset();
  if (!relay_failure.empty()) throw Error(ErrorKind::kInternal, relay_failure);
  int code = r.host_exit_code();
  write_exit_record(o.exit_fd, code,
                    r.reason == vm::ExitReason::kExited ? "exited with code " + std::to_string(code)
                                                        : r.describe());
  std::vector<std::string> views = machine.disk_views();

  if (o.json) {
    if (!summary.is_object()) summary = nlohmann::json::object();
    if (!summary.contains("root_dir"))  // --rootfs has no root disk (views[0] is a --disk)
      summary["root_disk"] = views.empty() ? "" : views[0];
    if (from_snapshot) summary["restored"] = restored;
    summary["reason"] = vm::to_string(r.reason);
    summary["status"] = r.status;
    summary["exit_code"] = code;
    summary["timings_ms"] = timings_json(r.timings);
    summary["published"] = ports_json;
    if (!r.detail.empty()) summary["detail"] = r.detail;
    std::cerr << summary.dump() << "\n";
  } else {
    if (r.reason != vm::ExitReason::kExited) std::cerr << "img2vm: " << r.describe() << "\n";
    if (o.timings) std::cerr << timings_line(r.timings) << "\n";
  }
  return code;
}

void write_exit_record(int fd, int code, const std::string& reason) {
  if (fd < 0) return;
  const std::string line = nlohmann::json{{"ExitCode", code}, {"Reason", reason}}.dump(
                               -1, ' ', false, nlohmann::json::error_handler_t::replace) +
                           "\n";
  // write(2), not pwrite: the main thread's seccomp filter allows only the former (the file is
  // new and written once).
  (void)!::write(fd, line.data(), line.size());
}

nlohmann::json attach_spec(const vm::MachineConfig& config, const AttachOptions& o,
                           const nlohmann::json& summary) {
  nlohmann::json spec = {{"machine", nlohmann::json::parse(vm::machine_config_to_json(config))},
                         {"attach",
                          {{"stop_timeout_ms", o.stop_timeout.count()},
                           {"tty", o.tty},
                           {"say", o.say},
                           {"json", o.json},
                           {"timings", o.timings},
                           {"ports_chosen", o.ports_chosen},
                           {"log_level", to_string(o.level)}}},
                         {"summary", summary}};
  if (o.run_as) spec["attach"]["run_as"] = {{"uid", o.run_as->uid}, {"gid", o.run_as->gid}};
  if (o.exit_fd >= 0) spec["attach"]["exit_fd"] = o.exit_fd;
  return spec;
}

void parse_attach_spec(const std::string& text, vm::MachineConfig& config, AttachOptions& o,
                       nlohmann::json& summary) {
  auto j = nlohmann::json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_object())
    throw Error(ErrorKind::kInvalidArgument, "VM spec: not a JSON object");
  for (const auto& [k, v] : j.items())
    if (k != "machine" && k != "attach" && k != "summary")
      throw Error(ErrorKind::kInvalidArgument, "VM spec: unknown member " + k);
  if (!j.contains("machine")) throw Error(ErrorKind::kInvalidArgument, "VM spec: no \"machine\"");
  config = vm::machine_config_from_json(j["machine"].dump());
  if (j.contains("attach")) {
    const auto& a = j["attach"];
    if (!a.is_object())
      throw Error(ErrorKind::kInvalidArgument, "VM spec: attach: not a JSON object");
    for (const auto& item : a.items()) {
      const std::string& k = item.key();
      const nlohmann::json& v = item.value();
      auto flag = [&](bool& b) {
        if (!v.is_boolean())
          throw Error(ErrorKind::kInvalidArgument, "VM spec: attach." + k + ": not true or false");
        b = v.get<bool>();
      };
      if (k == "stop_timeout_ms") {
        if (!v.is_number_unsigned())
          throw Error(ErrorKind::kInvalidArgument,
                      "VM spec: attach.stop_timeout_ms: not a count of ms");
        o.stop_timeout =
            std::chrono::milliseconds(std::min<uint64_t>(v.get<uint64_t>(), uint64_t(1) << 40));
      } else if (k == "run_as") {
        auto id = [&](const char* name) {
          if (!v.is_object() || !v.contains(name) || !v[name].is_number_unsigned() ||
              v[name].get<uint64_t>() == 0 || v[name].get<uint64_t>() >= 0xffffffffu)
            throw Error(ErrorKind::kInvalidArgument, std::string("VM spec: attach.run_as.") + name +
                                                         ": not a user or group id other than 0");
          return uint32_t(v[name].get<uint64_t>());
        };
        if (v.is_object())
          for (const auto& m : v.items())
            if (m.key() != "uid" && m.key() != "gid")
              throw Error(ErrorKind::kInvalidArgument,
                          "VM spec: unknown member attach.run_as." + m.key());
        o.run_as = RunAs{id("uid"), id("gid")};
      } else if (k == "exit_fd") {
        if (!v.is_number_unsigned() || v.get<uint64_t>() < 3 || v.get<uint64_t>() > (1u << 20))
          throw Error(ErrorKind::kInvalidArgument, "VM spec: attach.exit_fd: not a descriptor");
        o.exit_fd = int(v.get<uint64_t>());
      } else if (k == "tty")
        flag(o.tty);
      else if (k == "say")
        flag(o.say);
      else if (k == "json")
        flag(o.json);
      else if (k == "timings")
        flag(o.timings);
      else if (k == "ports_chosen")
        flag(o.ports_chosen);
      else if (k == "log_level") {
        if (!v.is_string())
          throw Error(ErrorKind::kInvalidArgument, "VM spec: attach.log_level: not a string");
        o.level = parse_log_level(v.get<std::string>());
      } else {
        throw Error(ErrorKind::kInvalidArgument, "VM spec: unknown member attach." + k);
      }
    }
  }
  summary = j.contains("summary") ? j["summary"] : nlohmann::json::object();
  if (!summary.is_object())
    throw Error(ErrorKind::kInvalidArgument, "VM spec: summary: not a JSON object");
}

}  // namespace img2vm::cli
