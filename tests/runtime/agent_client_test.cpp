// The exec agent's host client (runtime/agent_client.hpp) end to end on the host: a fake VMM
// side accepts on a real unix socket, answers the CONNECT handshake and hands the connection to
// the guest init's real handler (init::serve_connection) in a forked process; or misbehaves.
#include "img2vm/runtime/agent_client.hpp"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <csignal>
#include <cstring>
#include <functional>
#include <string>
#include <thread>

#include "img2vm/base/error.hpp"
#include "img2vm/base/fd.hpp"
#include "img2vm/init/agent.hpp"

using namespace img2vm;
using guestabi::ExecRequest;
using guestabi::FrameType;
using runtime::ExecResult;
using namespace std::chrono_literals;

namespace {

constexpr auto kTimeout = 30s;  // the handshake's bound; the fake answers at once

// The VMM side of the vsock socket for one connection: accepts it in a forked process, reads
// the CONNECT line and then does `then` with the connection.
class FakeVmm {
 public:
  // `refusals`: connections closed after their CONNECT line without an answer before the one
  // that is served (kForever: every one, until the fake is destroyed).
  static constexpr int kForever = -1;
  FakeVmm(std::function<void(int)> then, bool answer = true, int refusals = 0)
      : forever_(refusals == kForever) {
    path_ = dir_.path() / "vsock.sock";
    UniqueFd l(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    std::strcpy(a.sun_path, path_.c_str());
    EXPECT_EQ(::bind(l.get(), reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
    EXPECT_EQ(::listen(l.get(), 4), 0);
    pid_ = ::fork();
    if (pid_ == 0) {
      int c = -1;
      for (int i = 0;; ++i) {
        c = ::accept4(l.get(), nullptr, nullptr, SOCK_CLOEXEC);
        std::string line;
        char ch;
        while (line.size() < 64 && ::read(c, &ch, 1) == 1 && ch != '\n') line += ch;
        if (line != "CONNECT 1024") ::_exit(3);
        if (refusals != kForever && i >= refusals) break;
        ::close(c);
      }
      if (answer && ::write(c, "OK 1073741824\n", 14) != 14) ::_exit(4);
      then(c);
      ::_exit(0);
    }
  }
  ~FakeVmm() {
    int st = 0;
    if (forever_) {  // it refuses until it is stopped
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, &st, 0);
      return;
    }
    ::waitpid(pid_, &st, 0);
    EXPECT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0) << "the fake VMM side failed: " << st;
  }
  const std::filesystem::path& path() const { return path_; }

 private:
  TempDir dir_;
  std::filesystem::path path_;
  bool forever_ = false;
  pid_t pid_ = -1;
};

init::AgentContext context(pid_t workload = 0) {
  init::AgentContext c;
  c.config_env = {"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"};
  c.hostname = "vm";
  c.workdir = "/";
  c.workload_pid = workload;
  return c;
}

std::function<void(int)> agent(init::AgentContext ctx = context()) {
  return [ctx](int fd) { init::serve_connection(fd, ctx); };
}

ExecRequest exec_of(std::vector<std::string> args) {
  ExecRequest e;
  e.args = std::move(args);
  return e;
}

struct Pipe {
  UniqueFd r, w;
  Pipe() {
    int p[2];
    EXPECT_EQ(::pipe2(p, O_CLOEXEC), 0);
    r = UniqueFd(p[0]);
    w = UniqueFd(p[1]);
  }
};

std::string file_text(const std::filesystem::path& p) { return read_file(p); }

template <typename F>
Error error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e;
  }
  return Error(ErrorKind::kInternal, "(no error)");
}

// Reads `fd` until `want` has appeared (or end of file); returns what was read.
std::string read_until(int fd, std::string& acc, std::string_view want) {
  char buf[4096];
  while (acc.find(want) == std::string::npos) {
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n <= 0) break;
    acc.append(buf, static_cast<std::size_t>(n));
  }
  return acc;
}

}  // namespace

TEST(AgentClient, ExecStreamsOutputAndReturnsTheStatus) {
  FakeVmm vmm(agent());
  TempDir dir;
  UniqueFd out = open_file(dir.path() / "out", O_WRONLY | O_CREAT);
  UniqueFd err = open_file(dir.path() / "err", O_WRONLY | O_CREAT);
  ExecResult r =
      runtime::exec(vmm.path(), kTimeout, exec_of({"sh", "-c", "echo out; echo err >&2; exit 3"}),
                    -1, out.get(), err.get());
  EXPECT_EQ(r.status, 3);
  EXPECT_EQ(r.error, "");
  EXPECT_EQ(file_text(dir.path() / "out"), "out\n");
  EXPECT_EQ(file_text(dir.path() / "err"), "err\n");
}

TEST(AgentClient, StdinIsForwardedToItsEnd) {
  FakeVmm vmm(agent());
  TempDir dir;
  std::string input(300000, 'x');
  write_all(open_file(dir.path() / "in", O_WRONLY | O_CREAT).get(), input, "input");
  UniqueFd in = open_file(dir.path() / "in", O_RDONLY);
  UniqueFd out = open_file(dir.path() / "out", O_WRONLY | O_CREAT);
  ExecRequest req = exec_of({"sh", "-c", "cat; echo end"});
  req.open_stdin = true;
  ExecResult r = runtime::exec(vmm.path(), kTimeout, req, in.get(), out.get(), -1);
  EXPECT_EQ(r.status, 0);
  EXPECT_EQ(file_text(dir.path() / "out"), input + "end\n");
}

TEST(AgentClient, WithoutStdinTheInputIsNotRead) {
  FakeVmm vmm(agent());
  Pipe in;
  write_all(in.w.get(), "left for the caller", "input");
  ExecResult r = runtime::exec(vmm.path(), kTimeout, exec_of({"true"}), in.r.get(), -1, -1);
  EXPECT_EQ(r.status, 0);
  in.w.reset();
  char buf[64];
  EXPECT_EQ(::read(in.r.get(), buf, sizeof buf), 19);
}

TEST(AgentClient, MissingCommandIs127WithTheMessage) {
  FakeVmm vmm(agent());
  ExecResult r = runtime::exec(vmm.path(), kTimeout, exec_of({"no-such-command-here"}), -1, -1, -1);
  EXPECT_EQ(r.status, 127);
  EXPECT_EQ(r.error, "exec: \"no-such-command-here\": executable file not found in $PATH");
}

TEST(AgentClient, TtyResizeAndSignalFromAnotherThread) {
  FakeVmm vmm(agent());
  ExecRequest req = exec_of({"sh", "-c", "stty size; read line; stty size; exec sleep 1000"});
  req.tty = true;
  req.rows = 24;
  req.cols = 80;
  req.open_stdin = true;
  runtime::ExecSession session(runtime::connect_agent(vmm.path(), kTimeout), req);
  Pipe in, out;
  std::string seen;
  std::thread driver([&] {
    read_until(out.r.get(), seen, "24 80\r\n");
    session.resize(50, 132);
    write_all(in.w.get(), "go\n", "stdin");
    read_until(out.r.get(), seen, "50 132\r\n");
    session.signal(SIGKILL);
  });
  ExecResult r = session.run(in.r.get(), out.w.get(), -1);
  driver.join();
  EXPECT_EQ(seen, "24 80\r\ngo\r\n50 132\r\n");
  EXPECT_EQ(r.status, 128 + SIGKILL);
}

TEST(AgentClient, SignalAndStatusOfTheWorkload) {
  pid_t workload = ::fork();
  if (workload == 0) {
    ::pause();
    ::_exit(0);
  }
  {
    FakeVmm vmm(agent(context(workload)));
    guestabi::AgentResponse st = runtime::agent_status(vmm.path(), kTimeout);
    EXPECT_EQ(st.workload_pid, workload);
    EXPECT_TRUE(st.running);
  }
  {
    FakeVmm vmm(agent(context(workload)));
    runtime::signal_workload(vmm.path(), SIGUSR2, kTimeout);
  }
  int st = 0;
  ASSERT_EQ(::waitpid(workload, &st, 0), workload);
  EXPECT_TRUE(WIFSIGNALED(st) && WTERMSIG(st) == SIGUSR2);
  FakeVmm vmm(agent(context(0)));
  Error e = error_of([&] { runtime::signal_workload(vmm.path(), SIGUSR2, kTimeout); });
  EXPECT_EQ(std::string(e.what()),
            "exec agent at " + vmm.path().string() + ": signalling the workload: no workload");
}

// OCI start against a VM whose agent does not listen yet (refused twice), then once more.
TEST(AgentClient, StartReleasesTheWaitingWorkloadOnce) {
  Pipe gate;  // the test in the waiting workload's place
  init::AgentContext ctx = context();
  ctx.start.emplace(gate.w.get());
  {
    FakeVmm vmm(agent(ctx), true, 2);
    runtime::start_workload(vmm.path(), kTimeout);
  }
  char go = 0;
  ASSERT_EQ(::read(gate.r.get(), &go, 1), 1);
  FakeVmm vmm(agent(ctx));
  Error e = error_of([&] { runtime::start_workload(vmm.path(), kTimeout); });
  EXPECT_EQ(e.kind(), ErrorKind::kInvalidArgument);
  EXPECT_EQ(std::string(e.what()),
            "exec agent at " + vmm.path().string() + ": start: the workload has already started");
}

TEST(AgentClient, HandshakeFailuresNameTheSocket) {
  TempDir dir;
  Error none = error_of([&] { runtime::connect_agent(dir.path() / "nothing", kTimeout); });
  EXPECT_EQ(none.kind(), ErrorKind::kNotFound);
  EXPECT_NE(std::string(none.what()).find((dir.path() / "nothing").string()), std::string::npos);
  {
    // The VMM closes without an answer: nothing listens on the guest port, within the timeout.
    FakeVmm vmm([](int) {}, /*answer=*/false, FakeVmm::kForever);
    Error e = error_of([&] { runtime::connect_agent(vmm.path(), 300ms); });
    EXPECT_EQ(e.kind(), ErrorKind::kNetwork);
    EXPECT_NE(std::string(e.what()).find("refused CONNECT 1024"), std::string::npos) << e.what();
  }
  {
    // A guest whose agent listens only after a few refusals (a VM just started) is waited for.
    FakeVmm vmm([](int) {}, /*answer=*/true, /*refusals=*/3);
    EXPECT_NO_THROW(runtime::connect_agent(vmm.path(), std::chrono::seconds(30)));
  }
  {
    // No answer: the handshake's timeout ends the wait (the fake waits for the client to go).
    FakeVmm vmm(
        [](int fd) {
          char c;
          while (::read(fd, &c, 1) > 0) {
          }
        },
        /*answer=*/false);
    Error e = error_of([&] { runtime::connect_agent(vmm.path(), 100ms); });
    EXPECT_EQ(e.kind(), ErrorKind::kNetwork);
    EXPECT_NE(std::string(e.what()).find("no answer to CONNECT 1024 within 100 ms"),
              std::string::npos)
        << e.what();
  }
  {
    FakeVmm vmm([](int fd) { (void)!::write(fd, "NOPE\n", 5); }, /*answer=*/false);
    Error e = error_of([&] { runtime::connect_agent(vmm.path(), kTimeout); });
    EXPECT_EQ(e.kind(), ErrorKind::kIntegrity);
    EXPECT_EQ(std::string(e.what()), "exec agent at " + vmm.path().string() +
                                         ": the VMM answered CONNECT 1024 with \"NOPE\", not OK "
                                         "<port>");
  }
}

TEST(AgentClient, GarbageFromTheGuestIsAnErrorNotACrashOrAHang) {
  auto run_against = [](std::function<void(int)> guest) {
    FakeVmm vmm(std::move(guest));
    return error_of([&] { runtime::exec(vmm.path(), kTimeout, exec_of({"true"}), -1, -1, -1); });
  };
  Error unknown = run_against([](int fd) { (void)!::write(fd, "\x63garbage", 8); });
  EXPECT_EQ(unknown.kind(), ErrorKind::kIntegrity);
  EXPECT_NE(std::string(unknown.what()).find("agent frame: unknown type 99"), std::string::npos);
  Error huge = run_against([](int fd) { (void)!::write(fd, "\x10\xff\xff\xff\x7f", 5); });
  EXPECT_NE(std::string(huge.what()).find("over the limit"), std::string::npos) << huge.what();
  Error cut = run_against([](int fd) { (void)!::write(fd, "\x10\x09\0\0\0abc", 8); });
  EXPECT_EQ(cut.kind(), ErrorKind::kNetwork);
  EXPECT_NE(std::string(cut.what()).find("ended in the middle of a frame"), std::string::npos);
  Error gone = run_against([](int) {});
  EXPECT_NE(std::string(gone.what()).find("ended before the exec's exit status"),
            std::string::npos);
  Error bad_exit = run_against([](int fd) {
    std::string f = guestabi::encode_frame(FrameType::kExit, R"({"status":999})");
    (void)!::write(fd, f.data(), f.size());
  });
  EXPECT_NE(std::string(bad_exit.what()).find("must be between 0 and 255"), std::string::npos);
  Error refused = run_against([](int fd) {
    std::string f = guestabi::encode_frame(FrameType::kResponse, R"({"error":"busy"})");
    (void)!::write(fd, f.data(), f.size());
  });
  EXPECT_EQ(refused.kind(), ErrorKind::kInvalidArgument);
  EXPECT_TRUE(std::string(refused.what()).ends_with(": busy")) << refused.what();
}
