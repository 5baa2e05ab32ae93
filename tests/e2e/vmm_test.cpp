// img2vm-vmm, the VMM process `img2vm run` execs, driven directly with --spec files and tiny
// freestanding guests (tests/vm/guests): the workload's console and exit status, the --json
// summary carrying the caller's fields, console input from its stdin, signals relayed as
// `img2vm run` does, a process that maps the runner's libraries and nothing else, every thread
// under a seccomp filter, and a VM that survives being stopped and continued. Where /dev/kvm
// cannot run the guests here, the KVM part runs in the nested rig's L1.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include "img2vm/base/fd.hpp"
#include "nested_rig.hpp"
#include "process.hpp"

using namespace img2vm::testing;
using img2vm::TempDir;
namespace fs = std::filesystem;
using namespace std::chrono_literals;

namespace {

fs::path guest(const std::string& name) { return fs::path(VM_GUEST_DIR) / (name + ".elf"); }

fs::path write_spec(const fs::path& dir, const std::string& name, const nlohmann::json& spec) {
  fs::path p = dir / name;
  std::ofstream(p) << spec.dump();
  return p;
}

nlohmann::json basic_spec(const std::string& mode,
                          nlohmann::json attach = nlohmann::json::object()) {
  return {{"machine",
           {{"kernel", guest("basic").string()},
            {"cmdline", "mode=" + mode},
            {"memory_mib", 64},
            {"timeout_ms", 60000}}},
          {"attach", attach},
          {"summary", {{"image", "docker.io/library/example:1"}, {"rootfs_cached", true}}}};
}

// The last line of `err` that parses as a JSON object.
nlohmann::json last_json_line(const std::string& err) {
  std::istringstream in(err);
  nlohmann::json found;
  for (std::string line; std::getline(in, line);) {
    auto j = nlohmann::json::parse(line, nullptr, false);
    if (!j.is_discarded() && j.is_object()) found = j;
  }
  return found;
}

std::string slurp(const fs::path& p) {
  std::ifstream in(p);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// The threads of process `pid`.
std::vector<std::string> tasks_of(pid_t pid) {
  std::vector<std::string> out;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator("/proc/" + std::to_string(pid) + "/task", ec))
    out.push_back(e.path().string());
  return out;
}

// A line of a /proc status file ("Seccomp:\t2" -> "2"), or "" when absent.
std::string status_field(const std::string& task, const std::string& key) {
  std::istringstream in(slurp(task + "/status"));
  for (std::string line; std::getline(in, line);)
    if (line.rfind(key + ":", 0) == 0) {
      std::string v = line.substr(key.size() + 1);
      v.erase(0, v.find_first_not_of(" \t"));
      return v;
    }
  return "";
}

// The state letter of a task (R, S, T, ...), 0 when it is gone.
char task_state(const std::string& task) {
  std::string stat = slurp(task + "/stat");
  auto close = stat.rfind(')');
  return close != std::string::npos && close + 2 < stat.size() ? stat[close + 2] : 0;
}

// Waits (bounded, 120 s: nested TCG is slow) until `done` holds.
template <class Pred>
bool eventually(Pred done) {
  for (int i = 0; i < 2400; ++i) {
    if (done()) return true;
    std::this_thread::sleep_for(50ms);
  }
  return done();
}

}  // namespace

TEST(VmmProcess, UsageAndBadSpecsAreOneLine) {
  auto usage = run_command({IMG2VM_VMM_BINARY});
  EXPECT_EQ(usage.exit_code, 2) << usage.describe();
  EXPECT_NE(usage.err.find("usage: img2vm-vmm --spec FILE | --spec-fd N"), std::string::npos)
      << usage.describe();

  TempDir dir("img2vm-vmm-spec");
  struct Case {
    std::string text;
    const char* says;
  } cases[] = {
      {"not json", "img2vm: VM spec: not a JSON object"},
      {R"({"attach": {}})", "img2vm: VM spec: no \"machine\""},
      {R"({"machine": {"kernel": "k"}, "extra": 1})", "img2vm: VM spec: unknown member extra"},
      {R"({"machine": {"kernel": "k"}, "attach": {"tty": 1}})",
       "img2vm: VM spec: attach.tty: not true or false"},
      {R"({"machine": {"kernel": "k"}, "attach": {"log_level": "loud"}})",
       "\"loud\" is not one of error, warn, info, debug"},
      {R"({"machine": {"kernel": "k", "vcpu": 2}})",
       "img2vm: machine config: vcpu: unknown member"},
      {R"({"machine": {"kernel": "k"}, "attach": {"run_as": {"uid": 0, "gid": 5}}})",
       "img2vm: VM spec: attach.run_as.uid: not a user or group id other than 0"},
      {R"({"machine": {"kernel": "k"}, "attach": {"run_as": {"uid": 7, "gid": 5, "caps": 1}}})",
       "img2vm: VM spec: unknown member attach.run_as.caps"},
      {R"({"machine": {"kernel": "/nonexistent/vmlinux"}})", "/nonexistent/vmlinux"},
  };
  for (const auto& c : cases) {
    fs::path p = dir.path() / "spec.json";
    std::ofstream(p) << c.text;
    auto r = run_command({IMG2VM_VMM_BINARY, "--spec", p.string()});
    EXPECT_EQ(r.exit_code, 125) << c.text << ": " << r.describe();
    EXPECT_NE(r.err.find(c.says), std::string::npos) << c.text << ": " << r.describe();
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.describe();
    EXPECT_TRUE(r.out.empty()) << r.out;
  }
  auto nofile = run_command({IMG2VM_VMM_BINARY, "--spec", (dir.path() / "missing.json").string()});
  EXPECT_EQ(nofile.exit_code, 125) << nofile.describe();
  EXPECT_NE(nofile.err.find("missing.json"), std::string::npos) << nofile.describe();
  auto badfd = run_command({IMG2VM_VMM_BINARY, "--spec-fd", "x"});
  EXPECT_EQ(badfd.exit_code, 125) << badfd.describe();
  EXPECT_NE(badfd.err.find("--spec-fd: not a file descriptor: x"), std::string::npos)
      << badfd.describe();
}

TEST(VmmProcess, RunsTheSpecRelaysSignalsAndMapsOnlyTheRunner) {
  if (!run_here_or_nested({IMG2VM_VMM_BINARY, guest("basic")})) return;
  TempDir dir("img2vm-vmm-run");

  // The workload's console on stdout, its status as the exit code, and the --json summary with
  // the caller's fields and the outcome.
  auto hello = run_command(
      {IMG2VM_VMM_BINARY, "--spec",
       write_spec(dir.path(), "hello.json", basic_spec("hello", {{"json", true}})).string()});
  EXPECT_EQ(hello.exit_code, 42) << hello.describe();
  EXPECT_EQ(hello.out, "hello from the guest\n");
  auto sum = last_json_line(hello.err);
  ASSERT_TRUE(sum.is_object()) << hello.err;
  EXPECT_EQ(sum.value("image", ""), "docker.io/library/example:1");
  EXPECT_EQ(sum.value("rootfs_cached", false), true);
  EXPECT_EQ(sum.value("reason", ""), "exited");
  EXPECT_EQ(sum.value("exit_code", -1), 42);
  EXPECT_TRUE(sum["timings_ms"].contains("vmm_setup")) << sum.dump();

  // Console input from stdin, read by the guest (mode=echo says "ready", then gives each byte
  // back in upper case until 'q').
  nlohmann::json echo = basic_spec("echo");
  echo["machine"]["console_in_fd"] = 0;
  RunOptions in;
  in.input = "abcq";
  auto echoed = run_command(
      {IMG2VM_VMM_BINARY, "--spec", write_spec(dir.path(), "echo.json", echo).string()}, in);
  EXPECT_EQ(echoed.exit_code, 0) << echoed.describe();
  EXPECT_NE(echoed.out.find("ready"), std::string::npos) << echoed.out;
  EXPECT_NE(echoed.out.find("ABC"), std::string::npos) << echoed.out;

  // A guest that never ends: while it runs, the process maps the runner's libraries and none of
  // the registry's, TLS, archive or ext4 ones. The first SIGTERM asks the workload to stop; as
  // it does not within the stop timeout, the VM is stopped: exit 130, reason "stopped".
  fs::path log = dir.path() / "hang.log";
  ChildProcess vmm({IMG2VM_VMM_BINARY, "--spec",
                    write_spec(dir.path(), "hang.json",
                               basic_spec("hang", {{"json", true}, {"stop_timeout_ms", 300}}))
                        .string()},
                   log);
  std::string maps;
  for (int i = 0; i < 100 && maps.find("libslirp") == std::string::npos; ++i) {
    std::this_thread::sleep_for(50ms);
    maps = slurp("/proc/" + std::to_string(vmm.pid()) + "/maps");
  }
  EXPECT_NE(maps.find("libslirp"), std::string::npos) << maps;
  for (const char* lib : {"libcurl", "libssl", "libcrypto", "libarchive", "libext2fs", "libisal",
                          "libzstd", "libnftables", "libnl-3"})
    EXPECT_EQ(maps.find(lib), std::string::npos) << "the VMM process maps " << lib;
  std::this_thread::sleep_for(300ms);  // the vCPU is in the guest
  EXPECT_TRUE(vmm.running());
  int code = vmm.stop(std::chrono::seconds(20));
  EXPECT_EQ(code, 130) << slurp(log);
  auto stopped = last_json_line(slurp(log));
  EXPECT_EQ(stopped.value("reason", ""), "stopped") << slurp(log);
  EXPECT_EQ(stopped.value("exit_code", -1), 130) << slurp(log);
}

// Once the VM runs, every thread of the VMM has a seccomp filter, the main thread (which waits
// for the VM) and the signal relay included. And the VM survives SIGSTOP + SIGCONT (Ctrl-Z and
// fg, a debugger, a cgroup freeze): sleeping threads resume through restart_syscall (the main
// thread's wait and the network thread's poll have timeouts), which every filter must allow.
// The guest (mode=echo, with a NIC on user-mode networking) waits for console input meanwhile
// and ends normally once it gets its 'q'.
TEST(VmmProcess, EveryThreadIsFilteredAndTheVmSurvivesStopAndContinue) {
  if (!run_here_or_nested({IMG2VM_VMM_BINARY, guest("basic")})) return;
  TempDir dir("img2vm-vmm-stop");
  nlohmann::json spec = basic_spec("echo");
  spec["machine"]["console_in_fd"] = 0;
  spec["machine"]["net"] = nlohmann::json::object();
  fs::path fifo = dir.path() / "in";
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0) << std::strerror(errno);
  fs::path log = dir.path() / "vmm.log";
  ChildProcess vmm({"sh", "-c", "exec \"$0\" --spec \"$1\" <\"$2\"", IMG2VM_VMM_BINARY,
                    write_spec(dir.path(), "echo.json", spec).string(), fifo.string()},
                   log);
  img2vm::UniqueFd in;
  ASSERT_TRUE(eventually([&] {
    in.reset(::open(fifo.c_str(),
                    O_WRONLY | O_NONBLOCK | O_CLOEXEC));  // ENXIO until the shell opened it
    return bool(in);
  })) << slurp(log);
  ASSERT_TRUE(eventually([&] { return slurp(log).find("ready") != std::string::npos; }))
      << slurp(log);

  // main, signal relay, I/O, network, one vCPU: each with a filter (Seccomp 2: filter mode).
  const std::string proc = "/proc/" + std::to_string(vmm.pid());
  std::string seen;
  EXPECT_TRUE(eventually([&] {
    auto tasks = tasks_of(vmm.pid());
    seen.clear();
    bool all = tasks.size() >= 5;
    for (const auto& t : tasks) {
      std::string mode = status_field(t, "Seccomp");
      seen += t + " " + status_field(t, "Name") + ": Seccomp " + mode + "\n";
      all = all && mode == "2";
    }
    return all;
  })) << "not every thread of the VMM is filtered:\n"
      << seen;

  ASSERT_EQ(::kill(vmm.pid(), SIGSTOP), 0);
  EXPECT_TRUE(eventually([&] {
    auto tasks = tasks_of(vmm.pid());
    return !tasks.empty() && std::all_of(tasks.begin(), tasks.end(),
                                         [](const std::string& t) { return task_state(t) == 'T'; });
  })) << "the VMM did not stop";
  ASSERT_EQ(::kill(vmm.pid(), SIGCONT), 0);
  EXPECT_TRUE(eventually([&] { return task_state(proc) != 'T'; }));
  // A VMM killed meanwhile would make this write raise SIGPIPE here: its exit code says more.
  struct sigaction ign = {}, old_pipe = {};
  ign.sa_handler = SIG_IGN;
  ::sigaction(SIGPIPE, &ign, &old_pipe);
  const ssize_t wrote = ::write(in.get(), "aq", 2);
  ::sigaction(SIGPIPE, &old_pipe, nullptr);
  ASSERT_TRUE(eventually([&] { return !vmm.running(); })) << slurp(log);
  EXPECT_EQ(wrote, 2) << std::strerror(errno);
  EXPECT_EQ(vmm.exit_code(), 0) << "(159: killed by SIGSYS, a refused system call)\n" << slurp(log);
  EXPECT_NE(slurp(log).find("ready\nA"), std::string::npos) << slurp(log);
}
