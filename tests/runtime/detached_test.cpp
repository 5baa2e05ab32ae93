// Detached VMs end to end without KVM: runtime::start_detached() daemonises the real monitor
// (img2vm-vmm --monitor), which starts a fake VMM (a shell script standing for img2vm-vmm: it
// prints, says the workload started on the spec's ready_fd, handles signals, exits or dies),
// and the real img2vm binary reads and drives it: ps, logs, inspect, kill, stop, wait, rm; and a
// tap in a network namespace of the test's own reaching the VMM (root).
#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <regex>
#include <thread>

#include "img2vm/base/error.hpp"
#include "img2vm/base/fd.hpp"
#include "img2vm/runtime/machine.hpp"
#include "img2vm/runtime/oci_runtime.hpp"
#include "img2vm/runtime/vms.hpp"
#include "netns.hpp"
#include "process.hpp"

namespace img2vm::runtime {
namespace {

namespace fs = std::filesystem;
using img2vm::testing::CommandResult;
using img2vm::testing::RunOptions;

// The fake VMM. Its mode is the spec's machine.cmdline.
constexpr const char* kFakeVmm = R"SH(#!/bin/sh
spec=$(cat /proc/self/fd/$2)
mode=$(printf '%s' "$spec" | sed -n 's/.*"cmdline":"\([a-z-]*\)".*/\1/p')
ready=$(printf '%s' "$spec" | sed -n 's/.*"ready_fd":\([0-9]*\).*/\1/p')
if [ "$mode" = fail ]; then
  echo "booting"
  echo "img2vm: the guest init failed: /bin/nosuch: not found" >&2
  exit 122
fi
if [ "$mode" = share ]; then
  fd=$(printf '%s' "$spec" | sed -n 's/.*"socket_fd":\([0-9]*\),"tag":"\([a-z0-9-]*\)".*/\1/p')
  tag=$(printf '%s' "$spec" | sed -n 's/.*"socket_fd":\([0-9]*\),"tag":"\([a-z0-9-]*\)".*/\2/p')
  echo "share $tag on $(readlink /proc/self/fd/$fd | cut -c1-7)"
  case "$spec" in *'"shares"'*) echo "img2vm-vmm got the shares list";; esac
fi
if [ "$mode" = created ]; then
  err=$(printf '%s' "$spec" | sed -n 's/.*"console_err_fd":\([0-9]*\).*/\1/p')
  echo "the workload waits for its start"
  echo "the workload's stderr" > /proc/self/fd/$err
  printf C > /proc/self/fd/$ready
  exit 5
fi
if [ "$mode" = terminal ]; then
  case "$spec" in *'"console_in_fd":0'*) echo "console input: stdin";; esac
  case "$spec" in *'"tty":true'*) echo "attach.tty";; esac
  [ -t 0 ] && echo "stdin is a terminal"
  trap 'echo "winch $(stty size)"' WINCH
  printf R > /proc/self/fd/$ready
  while :; do read -r line || continue; echo "typed $line"; [ "$line" = bye ] && exit 4; done
fi
if [ "$mode" = tap ]; then
  fd=$(printf '%s' "$spec" | sed -n 's/.*"tap":{"fd":\([0-9]*\).*/\1/p')
  echo "tap fd $fd is $(readlink /proc/self/fd/$fd), $(grep iff /proc/self/fdinfo/$fd)"
fi
echo "hello from the workload"
echo "second line" >&2
sleep 120 &
s=$!
trap 'echo got USR1' USR1
if [ "$mode" = ignore-term ]; then trap 'echo ignoring TERM' TERM; else trap 'echo got TERM; kill $s; exit 3' TERM; fi
printf R > /proc/self/fd/$ready
while kill -0 $s 2>/dev/null; do wait $s; done
)SH";

class Detached : public ::testing::Test {
 protected:
  TempDir home{"img2vm-detached-test"};
  VmStore store{home.path() / "vms"};
  fs::path fake = home.path() / "fake-vmm";

  std::vector<pid_t> sessions;  // of the VMs started: what TearDown ends (the fake's sleeps)

  void SetUp() override {
    std::ofstream(fake) << kFakeVmm;
    fs::permissions(fake, fs::perms::owner_all);
  }
  void TearDown() override {
    for (const auto& e : fs::directory_iterator("/proc")) {
      const std::string n = e.path().filename();
      if (n.find_first_not_of("0123456789") != std::string::npos) continue;
      pid_t pid = std::stoi(n);
      pid_t sid = ::getsid(pid);
      if (sid > 0 && std::find(sessions.begin(), sessions.end(), sid) != sessions.end())
        ::kill(pid, SIGKILL);
    }
  }

  VmRecord start(const std::string& name, const std::string& mode,
                 std::vector<DeferredShare> shares = {}, bool inherit_stdio = false,
                 int terminal_fd = -1) {
    VmCreate c;
    c.name = name;
    c.image = "fake:1";
    c.command = {"serve"};
    c.vmm_program = fake.string();
    DetachedOptions o;
    o.monitor = IMG2VM_VMM_BINARY;
    o.ready_timeout = std::chrono::minutes(2);
    o.shares = std::move(shares);
    o.inherit_stdio = inherit_stdio;
    o.terminal_fd = terminal_fd;
    nlohmann::json spec = {{"machine", {{"kernel", "/none"}, {"cmdline", mode}}}};
    try {
      VmRecord r = start_detached(store, c, spec.dump(), o);
      sessions.push_back(::getsid(r.monitor.pid));
      return r;
    } catch (const Error&) {
      if (auto r = store.find(name)) sessions.push_back(::getsid(r->monitor.pid));
      throw;
    }
  }

  // `p` started detached through the library, the fake as its VMM.
  VmRecord start_prepared(const std::string& name, const PreparedMachine& p) {
    VmCreate c;
    c.name = name;
    c.image = "fake:1";
    c.vmm_program = fake.string();
    DetachedOptions o;
    o.monitor = IMG2VM_VMM_BINARY;
    VmRecord r = start_detached(store, c, p, o);
    sessions.push_back(::getsid(r.monitor.pid));
    return r;
  }

  CommandResult img2vm(std::vector<std::string> args) {
    const char* bin = std::getenv("IMG2VM_BIN");  // set by ctest
    args.insert(args.begin(), bin ? bin : "img2vm");
    RunOptions o;
    o.env = {{"IMG2VM_HOME", home.path().string()}};
    o.timeout = std::chrono::minutes(2);
    return img2vm::testing::run_command(args, o);
  }

  // Waits (bounded) until `logs NAME` holds `text`.
  bool logs_show(const std::string& name, const std::string& text) {
    for (int i = 0; i < 600; ++i) {
      if (img2vm({"logs", name}).out.find(text) != std::string::npos) return true;
      // Woken by the log's change (inotify in follow) would be finer; a bounded re-read suffices.
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return false;
  }

  nlohmann::json inspect(const std::string& name) {
    CommandResult r = img2vm({"inspect", name});
    EXPECT_EQ(r.exit_code, 0) << r.describe();
    auto j = nlohmann::json::parse(r.out, nullptr, false);
    EXPECT_TRUE(j.is_array() && j.size() == 1) << r.out;
    return j.is_array() && !j.empty() ? j[0] : nlohmann::json::object();
  }
};

TEST_F(Detached, RunsInTheBackgroundAndIsDrivenByTheCli) {
  VmRecord r = start("web", "serve");
  EXPECT_EQ(r.status, VmStatus::kRunning);
  EXPECT_FALSE(r.started.empty());
  EXPECT_TRUE(r.monitor.alive());
  EXPECT_TRUE(r.vmm.alive());
  EXPECT_EQ(r.vsock_socket, (store.vm_dir(r.id) / "vsock.sock").string());
  // The monitor is a daemon: its own session, not this process's child.
  EXPECT_NE(::getsid(r.monitor.pid), ::getsid(0));
  EXPECT_EQ(::getsid(r.monitor.pid), ::getsid(r.vmm.pid));

  CommandResult ps = img2vm({"ps"});
  ASSERT_EQ(ps.exit_code, 0) << ps.describe();
  EXPECT_NE(ps.out.find("CONTAINER ID"), std::string::npos) << ps.out;
  EXPECT_NE(ps.out.find(r.id.substr(0, 12) + " "), std::string::npos) << ps.out;
  EXPECT_NE(ps.out.find("Up "), std::string::npos) << ps.out;
  EXPECT_NE(ps.out.find(" web\n"), std::string::npos) << ps.out;
  EXPECT_EQ(img2vm({"ps", "-q"}).out, r.id.substr(0, 12) + "\n");

  ASSERT_TRUE(logs_show("web", "second line"));
  CommandResult logs = img2vm({"logs", "web"});
  EXPECT_EQ(logs.out, "hello from the workload\nsecond line\n");
  CommandResult stamped = img2vm({"logs", "-t", "--tail", "1", r.id.substr(0, 5)});
  EXPECT_TRUE(std::regex_match(
      stamped.out, std::regex(R"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z second line\n)")))
      << stamped.out;

  CommandResult usr1 = img2vm({"kill", "-s", "USR1", "web"});
  EXPECT_EQ(usr1.exit_code, 0) << usr1.describe();
  EXPECT_EQ(usr1.out, "web\n");
  EXPECT_TRUE(logs_show("web", "got USR1"));
  CommandResult stop = img2vm({"kill", "-s", "STOP", "web"});
  EXPECT_EQ(stop.exit_code, 1);
  EXPECT_NE(stop.err.find("cannot reach this VM's workload"), std::string::npos) << stop.err;

  // logs -f follows until the VM ends.
  CommandResult followed;
  std::thread follower([&] { followed = img2vm({"logs", "-f", "web"}); });
  ASSERT_TRUE(logs_show("web", "got USR1"));
  CommandResult stopped = img2vm({"stop", "web"});
  follower.join();
  EXPECT_EQ(stopped.exit_code, 0) << stopped.describe();
  EXPECT_EQ(stopped.out, "web\n");
  EXPECT_EQ(followed.exit_code, 0) << followed.describe();
  EXPECT_NE(followed.out.find("got TERM\n"), std::string::npos) << followed.out;

  CommandResult wait = img2vm({"wait", "web"});
  EXPECT_EQ(wait.out, "3\n") << wait.describe();
  EXPECT_EQ(img2vm({"ps", "-q"}).out, "");
  CommandResult all = img2vm({"ps", "-a"});
  EXPECT_NE(all.out.find("Exited (3) "), std::string::npos) << all.out;
  nlohmann::json j = inspect("web");
  EXPECT_EQ(j["Id"], r.id);
  EXPECT_EQ(j["Name"], "/web");
  EXPECT_EQ(j["State"]["Status"], "exited");
  EXPECT_EQ(j["State"]["ExitCode"], 3);
  EXPECT_FALSE(r.monitor.alive());

  // exec's refusals: an ended VM, a VM and no command, -it without a terminal.
  CommandResult ended = img2vm({"exec", "web", "true"});
  EXPECT_EQ(ended.exit_code, 1) << ended.describe();
  EXPECT_NE(ended.err.find("is not running"), std::string::npos) << ended.err;
  CommandResult bare = img2vm({"exec", "web"});
  EXPECT_EQ(bare.exit_code, 1) << bare.describe();
  EXPECT_NE(bare.err.find("a VM and a command are needed"), std::string::npos) << bare.err;
  CommandResult notty = img2vm({"exec", "-it", "web", "sh"});
  EXPECT_EQ(notty.exit_code, 1) << notty.describe();
  EXPECT_NE(notty.err.find("the input device is not a TTY"), std::string::npos) << notty.err;

  CommandResult rm = img2vm({"rm", "web"});
  EXPECT_EQ(rm.exit_code, 0) << rm.describe();
  EXPECT_EQ(rm.out, "web\n");
  EXPECT_FALSE(fs::exists(store.vm_dir(r.id)));
  CommandResult again = img2vm({"rm", "web"});
  EXPECT_EQ(again.exit_code, 1);
  EXPECT_EQ(again.err, "img2vm: No such VM: web, and image web is not in the store\n");
}

TEST_F(Detached, StopKillsTheVmWhenTheWorkloadIgnoresTerm) {
  VmRecord r = start("stubborn", "ignore-term");
  CommandResult stop = img2vm({"stop", "-t", "1", "stubborn"});
  EXPECT_EQ(stop.exit_code, 0) << stop.describe();
  EXPECT_NE(img2vm({"logs", "stubborn"}).out.find("ignoring TERM"), std::string::npos);
  EXPECT_EQ(img2vm({"wait", "stubborn"}).out, "137\n");
  nlohmann::json j = inspect("stubborn");
  EXPECT_EQ(j["State"]["ExitCode"], 137);
  EXPECT_NE(j["State"]["ExitReason"].get<std::string>().find("killed by signal 9"),
            std::string::npos)
      << j.dump();
  EXPECT_FALSE(r.vmm.alive());
}

TEST_F(Detached, AVmmKilledWithSigkillShowsExited) {
  VmRecord r = start("victim", "serve");
  ASSERT_EQ(::kill(r.vmm.pid, SIGKILL), 0);
  EXPECT_EQ(img2vm({"wait", "victim"}).out, "137\n");
  CommandResult all = img2vm({"ps", "-a"});
  EXPECT_NE(all.out.find("Exited (137) "), std::string::npos) << all.out;
  EXPECT_NE(inspect("victim")["State"]["ExitReason"].get<std::string>().find(
                "the VMM was killed by signal 9"),
            std::string::npos);
}

TEST_F(Detached, AKilledMonitorTakesItsVmAlongAndIsReportedGone) {
  VmRecord r = start("orphan", "serve");
  ASSERT_EQ(::kill(r.monitor.pid, SIGKILL), 0);
  EXPECT_EQ(img2vm({"wait", "orphan"}).out, "255\n");
  nlohmann::json j = inspect("orphan");
  EXPECT_EQ(j["State"]["Status"], "exited");
  EXPECT_NE(j["State"]["ExitReason"].get<std::string>().find(
                "the VMM is gone; no exit status was recorded"),
            std::string::npos)
      << j.dump();
  EXPECT_EQ(img2vm({"rm", "orphan"}).exit_code, 0);
}

TEST_F(Detached, RmRefusesARunningVmAndForceKillsIt) {
  VmRecord r = start("busy", "serve");
  CommandResult refused = img2vm({"rm", "busy"});
  EXPECT_EQ(refused.exit_code, 1);
  EXPECT_NE(refused.err.find("You cannot remove a running container " + r.id), std::string::npos)
      << refused.err;
  EXPECT_TRUE(r.vmm.alive());
  CommandResult forced = img2vm({"rm", "-f", "busy"});
  EXPECT_EQ(forced.exit_code, 0) << forced.describe();
  EXPECT_FALSE(fs::exists(store.vm_dir(r.id)));
  EXPECT_FALSE(r.vmm.alive());
  EXPECT_FALSE(r.monitor.alive());
  EXPECT_EQ(img2vm({"rm", "-f", "busy"}).exit_code, 0);  // docker: -f ignores a missing one
}

TEST_F(Detached, ConcurrentStopAndRmLeaveNothingBehind) {
  VmRecord r = start("raced", "serve");
  CommandResult stop, rm;
  std::thread a([&] { stop = img2vm({"stop", "raced"}); });
  std::thread b([&] { rm = img2vm({"rm", "-f", "raced"}); });
  a.join();
  b.join();
  EXPECT_EQ(rm.exit_code, 0) << rm.describe();
  // stop either stopped it or found it gone: never a crash or a half state.
  EXPECT_TRUE(stop.exit_code == 0 || stop.err == "img2vm: No such VM: raced\n") << stop.describe();
  EXPECT_FALSE(fs::exists(store.vm_dir(r.id)));
  EXPECT_FALSE(r.vmm.alive());
  EXPECT_FALSE(r.monitor.alive());
  EXPECT_EQ(img2vm({"ps", "-a", "-q"}).out, "");
}

TEST_F(Detached, AVmThatFailsToStartSaysWhyAndStaysListed) {
  try {
    start("broken", "fail");
    FAIL() << "started";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("did not start: the guest init failed: /bin/nosuch"),
              std::string::npos)
        << e.what();
  }
  CommandResult all = img2vm({"ps", "-a"});
  EXPECT_NE(all.out.find("Exited (122) "), std::string::npos) << all.out;
  EXPECT_EQ(img2vm({"logs", "broken"}).out,
            "booting\nimg2vm: the guest init failed: /bin/nosuch: not found\n");
  // The name stays taken until rm.
  try {
    start("broken", "serve");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("Conflict. The container name \"/broken\""),
              std::string::npos);
  }
  EXPECT_EQ(img2vm({"rm", "broken"}).exit_code, 0);
}

// The children of `pid` whose command name is `comm`.
std::vector<pid_t> children_named(pid_t pid, const std::string& comm) {
  std::vector<pid_t> out;
  std::ifstream in("/proc/" + std::to_string(pid) + "/task/" + std::to_string(pid) + "/children");
  for (pid_t c; in >> c;) {
    std::ifstream cf("/proc/" + std::to_string(c) + "/comm");
    std::string name;
    std::getline(cf, name);
    if (name == comm) out.push_back(c);
  }
  return out;
}

// run -d -v: the monitor starts the share's virtiofsd (not the caller, whose end would end it),
// gives the VMM its socket as a virtio-fs device and no "shares" key, keeps it while the VM
// runs and stops it with the VM. A share that cannot be served ends the start with the reason.
TEST_F(Detached, TheMonitorServesSharedDirectoriesAsLongAsTheVm) {
  constexpr const char* kVirtiofsd = "/usr/lib/qemu/virtiofsd";
  if (::access(kVirtiofsd, X_OK) != 0) GTEST_SKIP() << kVirtiofsd << " not installed";
  fs::create_directories(home.path() / "data");
  DeferredShare s;
  s.tag = "img2vm-fs0";
  s.options.source = home.path() / "data";
  s.options.program = kVirtiofsd;
  VmRecord r = start("shared", "share", {s});
  ASSERT_TRUE(logs_show("shared", "hello from the workload"));
  std::string out = img2vm({"logs", "shared"}).out;
  EXPECT_NE(out.find("share img2vm-fs0 on socket:"), std::string::npos) << out;
  EXPECT_EQ(out.find("got the shares list"), std::string::npos) << out;
  std::vector<pid_t> served = children_named(r.monitor.pid, "virtiofsd");
  EXPECT_EQ(served.size(), 1u) << "the monitor's own child";
  EXPECT_EQ(img2vm({"stop", "-t", "5", "shared"}).exit_code, 0);
  EXPECT_EQ(img2vm({"wait", "shared"}).out, "3\n");
  for (pid_t p : served) {
    for (int i = 0; i < 200 && ::kill(p, 0) == 0; ++i)  // the monitor reaps it as it ends
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    EXPECT_NE(::kill(p, 0), 0) << "virtiofsd " << p << " outlived its VM";
  }

  s.options.program = home.path() / "no-such-virtiofsd";
  try {
    start("unserved", "serve", {s});
    FAIL() << "started without its share";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("did not start"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("no-such-virtiofsd"), std::string::npos) << e.what();
  }
}

// The library's form: a PreparedMachine started detached (its config is the spec's machine, its
// deferred share served by the monitor); one whose virtiofsd runs in this process is refused.
TEST_F(Detached, APreparedMachineStartsDetachedThroughTheLibrary) {
  constexpr const char* kVirtiofsd = "/usr/lib/qemu/virtiofsd";
  PreparedMachine p;
  p.config.kernel = "/none";
  p.config.cmdline = "share";
  const bool serve = ::access(kVirtiofsd, X_OK) == 0;
  if (serve) {
    fs::create_directories(home.path() / "lib-data");
    p.deferred_shares.push_back({"img2vm-fs0", {}});
    p.deferred_shares.back().options.source = home.path() / "lib-data";
    p.deferred_shares.back().options.program = kVirtiofsd;
  }
  VmRecord r = start_prepared("from-lib", p);
  ASSERT_TRUE(logs_show("from-lib", "hello from the workload"));
  if (serve) {
    EXPECT_NE(img2vm({"logs", "from-lib"}).out.find("share img2vm-fs0 on socket:"),
              std::string::npos);
  }
  store.stop(r.id, std::chrono::seconds(5));
  EXPECT_EQ(store.wait(r.id), 3);

  if (serve) {
    PreparedMachine here;
    VirtiofsdOptions vo;
    vo.source = home.path() / "lib-data";
    vo.program = kVirtiofsd;
    here.shares.push_back(Virtiofsd::start(vo));
    EXPECT_THROW(detached_options(here), Error);
  }
}

// A VM in a container engine's network namespace (NetworkMode::kNetns): the tap's descriptor
// reaches the VMM through the monitor, and the device outlives the PreparedMachine that made it
// for as long as the VM runs (root: namespaces of the test's own; skipped otherwise).
TEST_F(Detached, ANetnsTapReachesTheVmmAndLivesAsLongAsTheVm) {
  if (std::string why = img2vm::testing::enter_private_netns_dir(); !why.empty())
    GTEST_SKIP() << why << " (a network namespace of the test's own needs root)";
  img2vm::testing::make_engine_netns("vm", "peer");
  auto tap_exists = [] {
    return img2vm::testing::run_command({"ip", "-n", "vm", "link", "show"})
               .out.find("img2vm-tap0") != std::string::npos;
  };
  MachineOptions mo;
  mo.kernel = "/nonexistent/vmlinux";
  mo.rootfs = "/nonexistent/rootfs.ext4";
  mo.network = NetworkMode::kNetns;
  mo.netns = "/run/netns/vm";
  std::optional<PreparedMachine> p;
  p.emplace(build_machine(std::move(mo)));
  p->config.cmdline = "tap";
  VmRecord r = start_prepared("in-netns", *p);
  p.reset();  // the starter is done (img2vm-oci create exits)
  ASSERT_TRUE(logs_show("in-netns", "is /dev/net/tun, iff:\timg2vm-tap0"))
      << img2vm({"logs", "in-netns"}).out;
  EXPECT_TRUE(tap_exists());
  store.stop(r.id, std::chrono::seconds(5));
  EXPECT_EQ(store.wait(r.id), 3);
  // The monitor records the end just before it exits: the device goes with its last holder.
  bool gone = false;
  for (int i = 0; i < 200 && !(gone = !tap_exists()); ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_TRUE(gone) << "the tap outlived the VM";
}

// img2vm run --name records an attached run whose VMM writes its end to the exit file; a VMM
// that cannot start the VM (no KVM here, no kernel) writes it too.
TEST_F(Detached, TheVmmWritesItsEndToTheExitFileItIsGiven) {
  const fs::path spec = home.path() / "spec.json";
  const fs::path exit = home.path() / "exit.json";
  std::ofstream(spec) << nlohmann::json{
      {"machine", {{"kernel", "/nonexistent/vmlinux"}, {"kvm_device", "/nonexistent/kvm"}}},
      {"attach",
       {{"exit_fd", 9}}}}.dump();
  CommandResult r = img2vm::testing::run_command(
      {"sh", "-c",
       std::string(IMG2VM_VMM_BINARY) + " --spec " + spec.string() + " 9>" + exit.string()});
  EXPECT_EQ(r.exit_code, 125) << r.describe();
  auto j = nlohmann::json::parse(read_file(exit), nullptr, false);
  ASSERT_TRUE(j.is_object()) << read_file(exit);
  EXPECT_EQ(j["ExitCode"], 125);
  EXPECT_NE(j["Reason"].get<std::string>().find("/nonexistent"), std::string::npos) << j.dump();
}

}  // namespace
}  // namespace img2vm::runtime

namespace img2vm::runtime {
namespace {

std::string read_fd_to_end(int fd) {
  std::string out;
  char buf[4096];
  for (;;) {
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return out;
    out.append(buf, size_t(n));
  }
}

// img2vm-oci's create (DetachedOptions::inherit_stdio): start_detached returns once the
// workload waits for its start (the VMM's 'C'), which is not recorded as started; the monitor
// copies the console to the stdout it was given (conmon's pipe) and exits with the workload's
// status, which a subreaper (conmon) reaps.
TEST_F(Detached, AnOciCreateReturnsWhenTheWorkloadWaitsAndTheMonitorExitsWithItsStatus) {
  ASSERT_EQ(::prctl(PR_SET_CHILD_SUBREAPER, 1), 0);
  struct Unreap {
    ~Unreap() { ::prctl(PR_SET_CHILD_SUBREAPER, 0); }
  } unreap;
  int p[2];
  ASSERT_EQ(::pipe2(p, O_CLOEXEC), 0);
  UniqueFd rd(p[0]), wr(p[1]);
  ASSERT_EQ(::pipe2(p, O_CLOEXEC), 0);
  UniqueFd err_rd(p[0]), err_wr(p[1]);
  // start_detached runs in a child whose stdout and stderr are the pipes, as create runs under
  // conmon.
  int report[2];
  ASSERT_EQ(::pipe2(report, O_CLOEXEC), 0);
  UniqueFd report_rd(report[0]), report_wr(report[1]);
  pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    ::dup2(wr.get(), 1);
    ::dup2(err_wr.get(), 2);
    std::string line;
    try {
      VmRecord r = start("oci", "created", {}, true);
      line = std::to_string(r.monitor.pid) + " started=[" + r.started + "]";
    } catch (const std::exception& e) {
      line = std::string("error ") + e.what();
    }
    (void)!::write(report_wr.get(), line.data(), line.size());
    ::_exit(0);
  }
  wr.reset();
  err_wr.reset();
  report_wr.reset();
  int st = 0;
  ASSERT_EQ(::waitpid(child, &st, 0), child);
  std::string line = read_fd_to_end(report_rd.get());
  ASSERT_EQ(line.rfind("error", 0), std::string::npos) << line;
  EXPECT_NE(line.find("started=[]"), std::string::npos) << line;
  const pid_t monitor = std::stoi(line);
  // The forwarded console, until the monitor and the fake VMM are gone.
  std::string out = read_fd_to_end(rd.get());
  EXPECT_NE(out.find("the workload waits for its start"), std::string::npos) << out;
  // The workload's stderr (the VM's second UART) on the monitor's stderr, not its stdout.
  EXPECT_EQ(out.find("the workload's stderr"), std::string::npos) << out;
  std::string err = read_fd_to_end(err_rd.get());
  EXPECT_EQ(err, "the workload's stderr\n");
  // The monitor is this process's now (subreaper): its status is the workload's.
  int mst = 0;
  pid_t got;
  while ((got = ::waitpid(monitor, &mst, 0)) < 0 && errno == EINTR) {
  }
  ASSERT_EQ(got, monitor);
  ASSERT_TRUE(WIFEXITED(mst)) << mst;
  EXPECT_EQ(WEXITSTATUS(mst), 5);
  VmRecord r = store.get("oci");
  EXPECT_EQ(r.exit_code, 5);
  EXPECT_TRUE(r.started.empty()) << r.started;
  // Both in the log; `logs` gives each back on its own stream, as docker logs.
  CommandResult logs = img2vm({"logs", "oci"});
  EXPECT_NE(logs.out.find("the workload waits for its start\n"), std::string::npos) << logs.out;
  EXPECT_EQ(logs.out.find("the workload's stderr"), std::string::npos) << logs.out;
  EXPECT_NE(logs.err.find("the workload's stderr\n"), std::string::npos) << logs.err;
  while (::waitpid(-1, nullptr, WNOHANG) > 0) {
  }
}

// img2vm-oci's process.terminal (DetachedOptions::terminal_fd): the terminal is the VMM's stdin
// (the spec's console input, attach.tty) and gets the console; a window size set on the master
// reaches the VMM as SIGWINCH (the monitor looks every 100 ms; the terminal is no one's
// controlling terminal), and the monitor exits with the workload's status.
TEST_F(Detached, ATerminalIsTheVmmsInputAndGetsTheConsoleAndResizes) {
  ConsolePty pty = open_console_pty();
  VmRecord r = start("tty", "terminal", {}, false, pty.slave.get());
  pty.slave.reset();
  std::string seen;
  // What the terminal has said, until it says `want` or hangs up (bounded: 60 s).
  auto until = [&](const std::string& want) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    while (seen.find(want) == std::string::npos && std::chrono::steady_clock::now() < deadline) {
      struct pollfd pf {
        pty.master.get(), POLLIN, 0
      };
      if (::poll(&pf, 1, 1000) <= 0) continue;
      char buf[4096];
      ssize_t n = ::read(pty.master.get(), buf, sizeof buf);
      if (n <= 0) return false;  // EIO: every slave is closed
      seen.append(buf, size_t(n));
    }
    return seen.find(want) != std::string::npos;
  };
  ASSERT_TRUE(until("stdin is a terminal")) << seen;
  EXPECT_NE(seen.find("console input: stdin"), std::string::npos) << seen;
  EXPECT_NE(seen.find("attach.tty"), std::string::npos) << seen;
  struct winsize ws {};
  ws.ws_row = 21;
  ws.ws_col = 77;
  ASSERT_EQ(::ioctl(pty.master.get(), TIOCSWINSZ, &ws), 0);
  EXPECT_TRUE(until("winch 21 77")) << seen;
  ASSERT_EQ(::write(pty.master.get(), "hello\nbye\n", 10), 10);
  EXPECT_TRUE(until("typed bye")) << seen;
  EXPECT_NE(seen.find("typed hello"), std::string::npos) << seen;
  until("the end that never comes: read to the hang-up");
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (store.get(r.id).status != VmStatus::kExited && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  EXPECT_EQ(store.get(r.id).exit_code, 4);
}

}  // namespace
}  // namespace img2vm::runtime
