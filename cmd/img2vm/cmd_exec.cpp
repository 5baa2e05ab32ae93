// `img2vm exec [-i] [-t] [-e K[=V]] [-u USER] [-w DIR] VM COMMAND [ARG...]`: runs a command in a
// running VM, as `docker exec` runs one in a container. The VM's guest agent (docs/guest-abi.md
// §6) starts it with the workload's environment, user and working directory unless told
// otherwise; its stdout and stderr come back apart (together on the terminal with -t), its exit
// status is img2vm's. runtime::VmStore finds the VM, runtime::ExecSession does the work; this
// file parses, sets up the terminal and relays signals.
#include <poll.h>
#include <pthread.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/signalfd.h>
#include <termios.h>
#include <unistd.h>

#include <csignal>
#include <cstdlib>
#include <iostream>
#include <memory>
#include <optional>
#include <thread>

#include "cli.hpp"
#include "commands.hpp"
#include "img2vm/base/error.hpp"
#include "img2vm/base/fd.hpp"
#include "img2vm/runtime/agent_client.hpp"
#include "img2vm/runtime/vms.hpp"
#include "terminal.hpp"

namespace img2vm::cli {

namespace {

// How long the agent gets to answer a VM that has just started (it starts with the workload).
constexpr std::chrono::seconds kAgentTimeout{30};

struct ExecArgs {
  bool interactive = false, tty = false;
  std::vector<std::string> env;
  std::string user, workdir;
  std::vector<std::string> words;  // VM COMMAND [ARG...]
};

// The signals the exec'd process gets from this one (docker exec leaves them to the client;
// passing them on ends the remote process with the local one). SIGWINCH resizes its terminal.
constexpr int kRelayed[] = {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGWINCH};

// Passes this process's signals to the exec'd process while it lives: the signals are blocked
// in every thread (the mask is set before the thread starts) and read from a signalfd.
class SignalRelay {
 public:
  SignalRelay(runtime::ExecSession& s, int tty_fd) : s_(s), tty_fd_(tty_fd) {
    sigemptyset(&set_);
    for (int sig : kRelayed) sigaddset(&set_, sig);
    ::pthread_sigmask(SIG_BLOCK, &set_, &old_);
    sfd_.reset(::signalfd(-1, &set_, SFD_CLOEXEC | SFD_NONBLOCK));
    stop_.reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    if (!sfd_ || !stop_) {
      int err = errno;
      ::pthread_sigmask(SIG_SETMASK, &old_, nullptr);
      throw_errno("exec: setting up the signal relay", err);
    }
    thread_ = std::thread([this] { loop(); });
  }
  ~SignalRelay() {
    uint64_t one = 1;
    (void)!::write(stop_.get(), &one, sizeof one);
    thread_.join();
    ::pthread_sigmask(SIG_SETMASK, &old_, nullptr);
  }
  SignalRelay(const SignalRelay&) = delete;
  SignalRelay& operator=(const SignalRelay&) = delete;

 private:
  void loop() {
    for (;;) {
      pollfd p[2] = {{sfd_.get(), POLLIN, 0}, {stop_.get(), POLLIN, 0}};
      if (::poll(p, 2, -1) < 0 && errno != EINTR) return;
      if (p[1].revents) return;
      signalfd_siginfo si{};
      while (::read(sfd_.get(), &si, sizeof si) == ssize_t(sizeof si)) {
        try {
          if (int(si.ssi_signo) == SIGWINCH) {
            if (auto ws = window_size(tty_fd_)) s_.resize(ws->first, ws->second);
          } else {
            s_.signal(int(si.ssi_signo));
          }
        } catch (const Error&) {
        }
      }
    }
  }

  runtime::ExecSession& s_;
  int tty_fd_;
  sigset_t set_{}, old_{};
  UniqueFd sfd_, stop_;
  std::thread thread_;
};

// -e KEY=VALUE as given; -e KEY takes KEY's value here, and is left out when it has none (as
// docker does).
std::vector<std::string> exec_env(const std::vector<std::string>& given) {
  std::vector<std::string> env;
  for (const auto& e : given) {
    if (e.empty() || e[0] == '=')
      throw Error(ErrorKind::kInvalidArgument, "invalid environment variable: " + e);
    if (e.find('=') != std::string::npos) {
      env.push_back(e);
    } else if (const char* v = std::getenv(e.c_str())) {
      env.push_back(e + "=" + v);
    }
  }
  return env;
}

int exec_in_vm(const ExecArgs& a) {
  if (a.words.size() < 2)
    throw Error(ErrorKind::kInvalidArgument,
                "exec: a VM and a command are needed (img2vm exec [OPTIONS] VM COMMAND [ARG...])");
  const bool in_tty = ::isatty(STDIN_FILENO) == 1;
  if (a.tty && a.interactive && !in_tty)
    throw Error(ErrorKind::kInvalidArgument, "the input device is not a TTY");
  runtime::VmStore vms;
  runtime::VmRecord r = vms.get(a.words[0]);
  if (r.status != runtime::VmStatus::kRunning)
    throw Error(ErrorKind::kInvalidArgument,
                "VM " + r.name + " (" + r.id.substr(0, 12) + ") is not running");
  if (r.vsock_socket.empty())
    throw Error(ErrorKind::kInvalidArgument,
                "VM " + r.name + " has no vsock device, so nothing can be run in it");

  guestabi::ExecRequest req;
  req.args.assign(a.words.begin() + 1, a.words.end());
  req.env = exec_env(a.env);
  req.user = a.user;
  req.workdir = a.workdir;
  req.tty = a.tty;
  req.open_stdin = a.interactive;
  const int tty_fd = in_tty ? STDIN_FILENO : STDOUT_FILENO;
  if (a.tty)
    if (auto ws = window_size(tty_fd)) {
      req.rows = ws->first;
      req.cols = ws->second;
    }
  runtime::ExecSession session(runtime::connect_agent(r.vsock_socket, kAgentTimeout), req);
  std::optional<RawTerminal> raw;
  if (a.tty && a.interactive && in_tty) raw.emplace(STDIN_FILENO);
  runtime::ExecResult result;
  {
    SignalRelay relay(session, tty_fd);
    result = session.run(a.interactive ? STDIN_FILENO : -1, STDOUT_FILENO, STDERR_FILENO);
  }
  raw.reset();
  if (!result.error.empty()) std::cerr << "img2vm: " << result.error << "\n";
  return result.status;
}

}  // namespace

void register_exec(CLI::App& app, Globals&, Action* slot) {
  auto a = std::make_shared<ExecArgs>();
  auto* sub = app.add_subcommand("exec", "Run a command in a running VM, like docker exec");
  // The words from the VM on are ours: `exec web sh -c ...` must not read -c as an option.
  sub->prefix_command();
  sub->add_flag("-i,--interactive", a->interactive, "Keep stdin open and pass it to the command");
  sub->add_flag("-t,--tty", a->tty, "Give the command a terminal");
  sub->add_option("-e,--env", a->env, "Set an environment variable (KEY=VALUE, or KEY from here)")
      ->allow_extra_args(false);
  sub->add_option("-u,--user", a->user, "User (name or uid[:gid]) instead of the workload's");
  sub->add_option("-w,--workdir", a->workdir, "Working directory instead of the workload's");
  sub->callback([a, sub, slot] {
    a->words = sub->remaining();
    *slot = [a] {
      if (!a->words.empty() && a->words[0].size() > 1 && a->words[0][0] == '-') {
        std::cerr << "img2vm: exec: unknown option " << a->words[0]
                  << " (see 'img2vm exec --help')\n";
        return kExitUsage;
      }
      try {
        return exec_in_vm(*a);
      } catch (const Error& e) {
        std::cerr << "img2vm: " << e.what() << "\n";
        return kExitError;
      }
    };
  });
}

}  // namespace img2vm::cli
