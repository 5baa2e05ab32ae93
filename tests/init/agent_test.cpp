// The exec agent's connection handler (guest/init/src/agent.cpp) on the host: a forked process
// serves one end of a unix socketpair, the test speaks the protocol on the other, and real
// commands run (sh, stty, id).
#include "img2vm/init/agent.hpp"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <csignal>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "img2vm/base/fd.hpp"
#include "img2vm/guestabi/agent.hpp"
#include "img2vm/guestabi/error.hpp"

using namespace img2vm::guestabi;
using img2vm::TempDir;
using img2vm::UniqueFd;
using img2vm::init::AgentContext;

namespace {

constexpr int kStallMs = 60'000;  // a handler that says nothing this long has hung

struct Transcript {
  std::string out, err;
  std::optional<ExecExit> exit;
  std::optional<AgentResponse> response;
  bool eof = false;
};

// One connection to a forked serve_connection().
class Session {
 public:
  explicit Session(const AgentContext& ctx) {
    int sv[2];
    EXPECT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    pid_ = ::fork();
    if (pid_ == 0) {
      ::close(sv[0]);
      img2vm::init::serve_connection(sv[1], ctx);
      ::_exit(0);
    }
    ::close(sv[1]);
    fd_ = UniqueFd(sv[0]);
  }
  ~Session() {
    fd_.reset();
    int st = 0;
    ::waitpid(pid_, &st, 0);
    EXPECT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0) << "the handler crashed: " << st;
  }

  void send_raw(std::string_view bytes) {
    while (!bytes.empty()) {
      ssize_t n = ::send(fd_.get(), bytes.data(), bytes.size(), MSG_NOSIGNAL);
      if (n <= 0) return;  // the handler may have hung up already
      bytes.remove_prefix(static_cast<std::size_t>(n));
    }
  }
  void send(FrameType t, std::string_view payload) { send_raw(encode_frame(t, payload)); }
  void request(const AgentRequest& r) { send(FrameType::kRequest, to_json(r)); }

  // Reads frames until `until` holds or the stream ends.
  template <typename Pred>
  Transcript& read(Pred until) {
    char buf[65536];
    while (!until(t_) && !t_.eof) {
      while (auto f = dec_.next()) {
        switch (f->type) {
          case FrameType::kStdout:
            t_.out += f->payload;
            break;
          case FrameType::kStderr:
            t_.err += f->payload;
            break;
          case FrameType::kExit:
            t_.exit = exec_exit_from_json(f->payload);
            break;
          case FrameType::kResponse:
            t_.response = agent_response_from_json(f->payload);
            break;
          default:
            ADD_FAILURE() << "unexpected frame " << int(f->type);
        }
        if (until(t_)) return t_;
      }
      pollfd p{fd_.get(), POLLIN, 0};
      if (::poll(&p, 1, kStallMs) != 1) {
        ADD_FAILURE() << "the handler stalled";
        t_.eof = true;
        break;
      }
      ssize_t n = ::recv(fd_.get(), buf, sizeof buf, 0);
      if (n <= 0) {
        t_.eof = true;
        break;
      }
      dec_.feed(std::string_view(buf, static_cast<std::size_t>(n)));
    }
    return t_;
  }
  Transcript& read_all() {
    return read([](const Transcript&) { return false; });
  }
  int fd() const { return fd_.get(); }

 private:
  pid_t pid_ = -1;
  UniqueFd fd_;
  FrameDecoder dec_;
  Transcript t_;
};

AgentContext context() {
  AgentContext c;
  c.config_env = {"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                  "IMAGE_VAR=from-image"};
  c.hostname = "agenthost";
  c.workdir = "/";
  return c;
}

ExecRequest exec(std::vector<std::string> args) {
  ExecRequest e;
  e.args = std::move(args);
  return e;
}

}  // namespace

TEST(AgentExec, StreamsStdoutStderrAndTheExitStatus) {
  Session s(context());
  s.request(exec({"sh", "-c", "echo out; echo err >&2; exit 3"}));
  Transcript& t = s.read_all();
  EXPECT_EQ(t.out, "out\n");
  EXPECT_EQ(t.err, "err\n");
  ASSERT_TRUE(t.exit);
  EXPECT_EQ(*t.exit, (ExecExit{3, ""}));
}

TEST(AgentExec, SignalDeathIs128PlusTheSignal) {
  Session s(context());
  s.request(exec({"sh", "-c", "echo ready; exec sleep 1000"}));
  s.read([](const Transcript& t) { return t.out == "ready\n"; });
  s.send(FrameType::kSignal, encode_signal(SIGTERM));
  Transcript& t = s.read_all();
  ASSERT_TRUE(t.exit);
  EXPECT_EQ(t.exit->status, 128 + SIGTERM);
}

TEST(AgentExec, ForwardsStdinAndItsEnd) {
  Session s(context());
  ExecRequest e = exec({"sh", "-c", "wc -c; cat >&2"});
  e.open_stdin = true;
  s.request(e);
  s.send(FrameType::kStdin, std::string(100000, 'x').substr(0, 60000));
  s.send(FrameType::kStdin, std::string(40000, 'y'));
  s.send(FrameType::kStdinClose, "");
  Transcript& t = s.read_all();
  EXPECT_EQ(t.out, "100000\n");
  ASSERT_TRUE(t.exit);
  EXPECT_EQ(t.exit->status, 0);
}

// The host's client sends the request, stdin and its end at once when its input is ready (a
// pipe): under load they reach the guest in one read, and the frames behind the request must
// be handled without waiting for more bytes from the host (which never come: the exec hung).
TEST(AgentExec, FramesThatArriveWithTheRequestAreHandled) {
  Session s(context());
  ExecRequest e = exec({"cat"});
  e.open_stdin = true;
  s.send_raw(encode_frame(FrameType::kRequest, to_json(AgentRequest{e})) +
             encode_frame(FrameType::kStdin, "piped\n") + encode_frame(FrameType::kStdinClose, ""));
  Transcript& t = s.read_all();
  EXPECT_EQ(t.out, "piped\n");
  ASSERT_TRUE(t.exit);
  EXPECT_EQ(t.exit->status, 0);
}

TEST(AgentExec, WithoutStdinTheProcessReadsNothing) {
  Session s(context());
  s.request(exec({"sh", "-c", "cat; echo done"}));
  s.send(FrameType::kStdin, "ignored");
  Transcript& t = s.read_all();
  EXPECT_EQ(t.out, "done\n");
  EXPECT_EQ(t.exit, (ExecExit{0, ""}));
}

TEST(AgentExec, MissingCommandIs127AndNotExecutableIs126) {
  {
    Session s(context());
    s.request(exec({"no-such-command-here"}));
    Transcript& t = s.read_all();
    ASSERT_TRUE(t.exit);
    EXPECT_EQ(
        *t.exit,
        (ExecExit{127, "exec: \"no-such-command-here\": executable file not found in $PATH"}));
  }
  TempDir dir;
  std::string script = (dir.path() / "script").string();
  img2vm::write_all(img2vm::open_file(script, O_WRONLY | O_CREAT, 0644).get(), "#!/bin/sh\n",
                    "script");
  Session s(context());
  s.request(exec({script}));
  Transcript& t = s.read_all();
  ASSERT_TRUE(t.exit);
  EXPECT_EQ(t.exit->status, 126);
  EXPECT_NE(t.exit->error.find("permission denied"), std::string::npos) << t.exit->error;
}

TEST(AgentExec, EnvAndWorkdirDefaultToTheWorkloadsAndCanBeOverridden) {
  TempDir dir;
  AgentContext ctx = context();
  ctx.workdir = dir.path().string();
  {
    Session s(ctx);
    s.request(exec({"sh", "-c", "echo $IMAGE_VAR $HOSTNAME $HOME; pwd"}));
    Transcript& t = s.read_all();
    EXPECT_EQ(t.out, "from-image agenthost /root\n" + dir.path().string() + "\n");
  }
  Session s(ctx);
  ExecRequest e = exec({"sh", "-c", "echo $IMAGE_VAR $EXTRA; pwd"});
  e.env = {"IMAGE_VAR=overridden", "EXTRA=1"};
  e.workdir = "/tmp";
  s.request(e);
  Transcript& t = s.read_all();
  EXPECT_EQ(t.out, "overridden 1\n/tmp\n");
}

TEST(AgentExec, MissingWorkdirIs126) {
  Session s(context());
  ExecRequest e = exec({"true"});
  e.workdir = "/no/such/dir";
  s.request(e);
  Transcript& t = s.read_all();
  ASSERT_TRUE(t.exit);
  EXPECT_EQ(*t.exit, (ExecExit{126, "chdir to /no/such/dir: No such file or directory"}));
}

TEST(AgentExec, UserDefaultsToTheWorkloadsAndCanBeOverridden) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to change user";
  AgentContext ctx = context();
  ctx.user = "1234:2345";
  {
    Session s(ctx);
    s.request(exec({"sh", "-c", "echo $(id -u):$(id -g)"}));
    EXPECT_EQ(s.read_all().out, "1234:2345\n");
  }
  {
    Session s(ctx);
    ExecRequest e = exec({"sh", "-c", "echo $(id -u):$(id -g)"});
    e.user = "0";
    s.request(e);
    EXPECT_EQ(s.read_all().out, "0:0\n");
  }
  Session s(ctx);
  ExecRequest e = exec({"true"});
  e.user = "no-such-user-anywhere";
  s.request(e);
  Transcript& t = s.read_all();
  ASSERT_TRUE(t.exit);
  EXPECT_EQ(t.exit->status, 126);
  EXPECT_NE(t.exit->error.find("no-such-user-anywhere"), std::string::npos) << t.exit->error;
}

TEST(AgentExec, TtyWithSizeAndResize) {
  Session s(context());
  ExecRequest e = exec({"sh", "-c", "stty size; test -t 0 && echo tty; read line; stty size"});
  e.tty = true;
  e.rows = 24;
  e.cols = 80;
  e.open_stdin = true;
  s.request(e);
  s.read([](const Transcript& t) { return t.out.find("tty") != std::string::npos; });
  s.send(FrameType::kResize, encode_resize(50, 132));
  s.send(FrameType::kStdin, "go\n");
  Transcript& t = s.read_all();
  // The terminal echoes the input line and ends lines with \r\n.
  EXPECT_EQ(t.out, "24 80\r\ntty\r\ngo\r\n50 132\r\n");
  EXPECT_EQ(t.err, "");
  EXPECT_EQ(t.exit, (ExecExit{0, ""}));
}

TEST(AgentExec, HostGoingAwayKillsTheProcess) {
  TempDir dir;
  std::string pidfile = (dir.path() / "pid").string();
  pid_t child = 0;
  {
    Session s(context());
    s.request(exec({"sh", "-c", "echo $$ > " + pidfile + "; echo started; exec sleep 1000"}));
    s.read([](const Transcript& t) { return t.out == "started\n"; });
    child = std::stoi(img2vm::read_file(pidfile));
    ASSERT_EQ(::kill(child, 0), 0);
  }  // closes the connection and waits for the handler, which reaps the process
  EXPECT_NE(::kill(child, 0), 0);
}

TEST(AgentRequests, MalformedInputGetsAnErrorAndTheConnectionCloses) {
  {
    Session s(context());
    s.send_raw(std::string("\x10\xff\xff\xff\xff", 5));  // a stdout frame as a request, oversized
    Transcript& t = s.read_all();
    ASSERT_TRUE(t.response);
    EXPECT_EQ(t.response->error, "agent frame: length 4294967295 is over the limit of 65536");
    EXPECT_TRUE(t.eof);
  }
  {
    Session s(context());
    s.send(FrameType::kStdin, "not a request");
    EXPECT_EQ(s.read_all().response->error, "agent: the first frame must be a request");
  }
  {
    Session s(context());
    s.send(FrameType::kRequest, R"({"version":9,"op":"exec","args":["true"]})");
    EXPECT_EQ(s.read_all().response->error,
              "agent request: version 9 is not supported (this agent speaks version 1)");
  }
  {
    Session s(context());
    s.send_raw(std::string("\x63garbage", 8));
    EXPECT_EQ(s.read_all().response->error, "agent frame: unknown type 99");
  }
  {
    // Garbage in the middle of an exec: the process is killed, the host told.
    Session s(context());
    s.request(exec({"sh", "-c", "echo ready; exec sleep 1000"}));
    s.read([](const Transcript& t) { return t.out == "ready\n"; });
    s.send(FrameType::kResize, "xyz");
    Transcript& t = s.read_all();
    ASSERT_TRUE(t.response);
    EXPECT_EQ(t.response->error, "agent resize frame: 3 bytes, not 4 (rows, columns)");
    EXPECT_FALSE(t.exit);
  }
  {
    // A host that goes away mid-frame.
    Session s(context());
    s.send_raw(std::string("\x01\x10\x00\x00\x00{\"ver", 10));
  }
}

// A stand-in workload: a child that waits for a signal.
pid_t paused_child() {
  pid_t pid = ::fork();
  if (pid == 0) {
    ::pause();
    ::_exit(0);
  }
  return pid;
}

TEST(AgentRequests, SignalAndStatusOfTheWorkload) {
  const pid_t workload = paused_child();
  AgentContext ctx = context();
  ctx.workload_pid = workload;
  {
    Session s(ctx);
    s.request(StatusRequest{});
    EXPECT_EQ(s.read_all().response, (AgentResponse{"", workload, true}));
  }
  {
    Session s(ctx);
    s.request(SignalRequest{SIGUSR1});
    EXPECT_EQ(s.read_all().response, AgentResponse{});
  }
  int st = 0;
  ASSERT_EQ(::waitpid(workload, &st, 0), workload);
  EXPECT_TRUE(WIFSIGNALED(st) && WTERMSIG(st) == SIGUSR1);
  Session s(ctx);
  s.request(StatusRequest{});
  EXPECT_EQ(s.read_all().response, (AgentResponse{"", workload, false}));
}

// docker stop's first step: the image's StopSignal, whichever it is.
TEST(AgentRequests, StopSendsTheImagesStopSignal) {
  const pid_t workload = paused_child();
  AgentContext ctx = context();
  ctx.workload_pid = workload;
  ctx.stop_signal = SIGUSR2;
  {
    Session s(ctx);
    s.request(StopRequest{});
    EXPECT_EQ(s.read_all().response, AgentResponse{});
  }
  int st = 0;
  ASSERT_EQ(::waitpid(workload, &st, 0), workload);
  EXPECT_TRUE(WIFSIGNALED(st) && WTERMSIG(st) == SIGUSR2) << st;
}

// OCI start: the gate's pipe as PID 1 makes it, the test in the workload's place.
struct GatePipe {
  UniqueFd r, w;
  GatePipe() {
    int p[2];
    EXPECT_EQ(::pipe2(p, O_CLOEXEC), 0);
    r = UniqueFd(p[0]);
    w = UniqueFd(p[1]);
  }
  // Everything written to the pipe once every write end is closed (the test's own included).
  std::string drain() {
    w.reset();
    std::string got;
    char buf[16];
    ssize_t n;
    while ((n = ::read(r.get(), buf, sizeof buf)) > 0) got.append(buf, static_cast<std::size_t>(n));
    return got;
  }
};

TEST(AgentRequests, StartOpensTheGateOnce) {
  GatePipe gate;
  AgentContext ctx = context();
  ctx.start.emplace(gate.w.get());
  {
    Session s(ctx);
    s.request(StartRequest{});
    EXPECT_EQ(s.read_all().response, AgentResponse{});
  }
  // The byte is there for the workload at once.
  pollfd p{gate.r.get(), POLLIN, 0};
  ASSERT_EQ(::poll(&p, 1, 0), 1);
  {
    Session s(ctx);
    s.request(StartRequest{});
    EXPECT_EQ(s.read_all().response->error, "start: the workload has already started");
  }
  EXPECT_EQ(gate.drain().size(), 1u);
}

TEST(AgentRequests, ConcurrentStartsOpenTheGateOnce) {
  GatePipe gate;
  AgentContext ctx = context();
  ctx.start.emplace(gate.w.get());
  std::vector<std::unique_ptr<Session>> sessions;
  for (int i = 0; i < 8; ++i) sessions.push_back(std::make_unique<Session>(ctx));
  for (auto& s : sessions) s->request(StartRequest{});
  int opened = 0, refused = 0;
  for (auto& s : sessions) {
    std::optional<AgentResponse> r = s->read_all().response;
    ASSERT_TRUE(r);
    if (r->error.empty())
      ++opened;
    else if (r->error == "start: the workload has already started")
      ++refused;
  }
  EXPECT_EQ(opened, 1);
  EXPECT_EQ(refused, 7);
  sessions.clear();
  EXPECT_EQ(gate.drain().size(), 1u);
}

TEST(AgentRequests, StartWithoutAWaitingWorkloadIsRefused) {
  {
    // Not created waiting (no wait_for_start): it started with the VM.
    Session s(context());
    s.request(StartRequest{});
    EXPECT_EQ(s.read_all().response->error, "start: the workload has already started");
  }
  // The waiting process died (its read end closed): EPIPE, not a signal that kills the handler.
  GatePipe gate;
  gate.r.reset();
  AgentContext ctx = context();
  ctx.start.emplace(gate.w.get());
  Session s(ctx);
  s.request(StartRequest{});
  EXPECT_EQ(s.read_all().response->error, "start: the workload ended before it was started");
}

TEST(AgentListener, RefusesConnectionsBeyondTheBound) {
  TempDir dir;
  std::string path = (dir.path() / "agent.sock").string();
  UniqueFd l(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  std::strcpy(a.sun_path, path.c_str());
  ASSERT_EQ(::bind(l.get(), reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  ASSERT_EQ(::listen(l.get(), 128), 0);
  pid_t listener = ::fork();
  if (listener == 0) {
    img2vm::init::serve_listener(l.get(), context());
    ::_exit(1);
  }
  l.reset();
  auto connect_one = [&] {
    UniqueFd c(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    EXPECT_EQ(::connect(c.get(), reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
    return c;
  };
  // Each of these runs a `cat` that waits for stdin: all stay busy.
  std::vector<UniqueFd> busy;
  ExecRequest e = exec({"cat"});
  e.open_stdin = true;
  std::string request = encode_frame(FrameType::kRequest, to_json(AgentRequest{e}));
  for (unsigned i = 0; i < kMaxAgentConnections; ++i) {
    busy.push_back(connect_one());
    ASSERT_EQ(::send(busy.back().get(), request.data(), request.size(), MSG_NOSIGNAL),
              ssize_t(request.size()));
  }
  // Accepted in order, so this one comes after 64 live handlers.
  UniqueFd extra = connect_one();
  FrameDecoder d;
  char buf[4096];
  std::optional<Frame> f;
  while (!f) {
    pollfd p{extra.get(), POLLIN, 0};
    ASSERT_EQ(::poll(&p, 1, kStallMs), 1);
    ssize_t n = ::recv(extra.get(), buf, sizeof buf, 0);
    ASSERT_GT(n, 0);
    d.feed(std::string_view(buf, static_cast<std::size_t>(n)));
    f = d.next();
  }
  EXPECT_EQ(f->type, FrameType::kResponse);
  EXPECT_EQ(agent_response_from_json(f->payload).error,
            "agent: too many requests at once (at most 64)");
  // One of the busy ones still works.
  std::string in =
      encode_frame(FrameType::kStdin, "still here\n") + encode_frame(FrameType::kStdinClose, "");
  ASSERT_EQ(::send(busy[5].get(), in.data(), in.size(), MSG_NOSIGNAL), ssize_t(in.size()));
  std::string out;
  FrameDecoder d5;
  bool exited = false;
  while (!exited) {
    pollfd p{busy[5].get(), POLLIN, 0};
    ASSERT_EQ(::poll(&p, 1, kStallMs), 1);
    ssize_t n = ::recv(busy[5].get(), buf, sizeof buf, 0);
    ASSERT_GT(n, 0);
    d5.feed(std::string_view(buf, static_cast<std::size_t>(n)));
    while (auto g = d5.next()) {
      if (g->type == FrameType::kStdout) out += g->payload;
      if (g->type == FrameType::kExit) exited = true;
    }
  }
  EXPECT_EQ(out, "still here\n");
  busy.clear();  // the handlers kill their cats and end
  ::kill(listener, SIGKILL);
  ::waitpid(listener, nullptr, 0);
}
