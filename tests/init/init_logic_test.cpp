// The guest init's pure logic, on the host: docker run's override rules, Entrypoint + Cmd,
// the environment, PATH lookup and its errors, user resolution from fake rootfs directories,
// the per-run override transport and the overrides' mounts.
#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <linux/loop.h>
#include <sched.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <memory>
#include <string>

#include "img2vm/base/fd.hpp"
#include "img2vm/guestabi/cmdline.hpp"
#include "img2vm/guestabi/config.hpp"
#include "img2vm/guestabi/overrides_disk.hpp"
#include "img2vm/init/command.hpp"
#include "img2vm/init/guest_files.hpp"
#include "img2vm/init/limits.hpp"
#include "img2vm/init/mounts.hpp"
#include "img2vm/init/network.hpp"
#include "img2vm/init/sys.hpp"
#include "img2vm/init/user.hpp"

using namespace img2vm::init;
using img2vm::TempDir;
using img2vm::guestabi::RunOverrides;
using img2vm::guestabi::RuntimeConfig;
namespace guestabi = img2vm::guestabi;
namespace fs = std::filesystem;

using Strings = std::vector<std::string>;

namespace {

void put(const fs::path& p, std::string_view content, mode_t mode = 0644) {
  fs::create_directories(p.parent_path());
  std::ofstream(p, std::ios::binary | std::ios::trunc) << content;
  ASSERT_EQ(::chmod(p.c_str(), mode), 0) << p;
}

template <typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "(no error)";
}

RuntimeConfig image(Strings entrypoint, Strings cmd, Strings env = {}) {
  RuntimeConfig c;
  c.entrypoint = std::move(entrypoint);
  c.cmd = std::move(cmd);
  c.env = std::move(env);
  return c;
}

}  // namespace

// --- docker run's rules ---------------------------------------------------------------------

TEST(InitCommand, EntrypointAndCmdConcatenate) {
  EXPECT_EQ(command_line(image({"/bin/app", "--flag"}, {"serve", "x"})),
            (Strings{"/bin/app", "--flag", "serve", "x"}));
  EXPECT_EQ(command_line(image({}, {"sh", "-c", "exit 3"})), (Strings{"sh", "-c", "exit 3"}));
  EXPECT_EQ(command_line(image({"/entry"}, {})), (Strings{"/entry"}));
}

TEST(InitCommand, NothingToRunIsDockersError) {
  EXPECT_EQ(error_of([] { command_line(image({}, {})); }), "no command specified");
  EXPECT_EQ(error_of([] { command_line(image({""}, {})); }), "no command specified");
}

TEST(InitCommand, TrailingArgsReplaceCmdOnly) {
  RunOverrides o;
  o.cmd = Strings{"echo", "hi"};
  auto c = apply_overrides(image({"/entry"}, {"default"}), o);
  EXPECT_EQ(command_line(c), (Strings{"/entry", "echo", "hi"}));
}

TEST(InitCommand, EntrypointOverrideClearsImageCmd) {
  RunOverrides o;
  o.entrypoint = Strings{"/bin/other"};
  EXPECT_EQ(command_line(apply_overrides(image({"/entry"}, {"default"}), o)),
            (Strings{"/bin/other"}));
  o.cmd = Strings{"a", "b"};
  EXPECT_EQ(command_line(apply_overrides(image({"/entry"}, {"default"}), o)),
            (Strings{"/bin/other", "a", "b"}));
}

TEST(InitCommand, EmptyEntrypointOverrideRunsCmdAlone) {
  RunOverrides o;
  o.entrypoint = Strings{""};  // docker run --entrypoint "" IMAGE ARGS
  o.cmd = Strings{"ls", "-l"};
  EXPECT_EQ(command_line(apply_overrides(image({"/entry"}, {"default"}), o)),
            (Strings{"ls", "-l"}));
  o.cmd.reset();
  EXPECT_EQ(error_of([&] { command_line(apply_overrides(image({"/entry"}, {"default"}), o)); }),
            "no command specified");
}

TEST(InitCommand, EnvOverridesReplaceInPlaceOrAppendInOrder) {
  RunOverrides o;
  o.env = {"B=new", "C=1", "C=2", "A=x=y z"};
  auto c = apply_overrides(image({}, {"sh"}, {"A=1", "B=old", "D=4"}), o);
  EXPECT_EQ(c.env, (Strings{"A=x=y z", "B=new", "D=4", "C=2"}));
}

TEST(InitCommand, OtherOverridesReplace) {
  RuntimeConfig base = image({}, {"sh"});
  base.working_dir = "/srv";
  base.user = "app";
  base.hostname = "img";
  RunOverrides none;
  EXPECT_EQ(apply_overrides(base, none), base);
  RunOverrides o;
  o.working_dir = "/w";
  o.user = "0:0";
  o.hostname = "box";
  auto c = apply_overrides(base, o);
  EXPECT_EQ(c.working_dir, "/w");
  EXPECT_EQ(c.user, "0:0");
  EXPECT_EQ(c.hostname, "box");
}

TEST(InitEnv, DockerOrderAndDefaults) {
  EXPECT_EQ(workload_env({}, "h1", false, "/root"),
            (Strings{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                     "HOSTNAME=h1", "HOME=/root"}));
  EXPECT_EQ(workload_env({"PATH=/opt/bin", "X=a b=c", "NOVALUE"}, "h", true, ""),
            (Strings{"PATH=/opt/bin", "HOSTNAME=h", "TERM=xterm", "X=a b=c", "HOME=/"}));
  EXPECT_EQ(workload_env({"HOME=/data", "TERM=dumb", "HOSTNAME=mine"}, "h", true, "/root"),
            (Strings{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                     "HOSTNAME=mine", "TERM=dumb", "HOME=/data"}));
}

TEST(InitEnv, GetAndSet) {
  Strings env{"A=1", "AB=2"};
  env_set(env, "A=3");
  env_set(env, "ABC=4");
  EXPECT_EQ(env, (Strings{"A=3", "AB=2", "ABC=4"}));
  EXPECT_EQ(env_get(env, "AB"), "2");
  EXPECT_EQ(env_get(env, "ABCD"), std::nullopt);
  EXPECT_EQ(env_get({"E="}, "E"), "");
}

// --- PATH lookup ------------------------------------------------------------------------------

class InitLookup : public ::testing::Test {
 protected:
  void SetUp() override {
    put(root_.path() / "bin/sh", "#!/bin/sh\n", 0755);
    put(root_.path() / "usr/local/bin/tool", "x", 0755);
    put(root_.path() / "usr/bin/tool", "x", 0755);
    put(root_.path() / "usr/bin/data", "not executable", 0644);
    put(root_.path() / "bin/data", "x", 0755);
    put(root_.path() / "app/run", "x", 0755);
    put(root_.path() / "app/notexec", "x", 0600);
    fs::create_directories(root_.path() / "usr/bin/adir");
  }
  std::variant<std::string, ExecFailure> find(std::string_view name,
                                              std::string_view path = kDefaultPath,
                                              std::string_view cwd = "/") {
    return find_executable(root_.path(), name, path, cwd);
  }
  TempDir root_{"init-lookup"};
};

TEST_F(InitLookup, SearchesPathInOrder) {
  EXPECT_EQ(std::get<std::string>(find("tool")), "/usr/local/bin/tool");
  EXPECT_EQ(std::get<std::string>(find("tool", "/usr/bin:/usr/local/bin")), "/usr/bin/tool");
  EXPECT_EQ(std::get<std::string>(find("sh")), "/bin/sh");
}

TEST_F(InitLookup, SkipsNonExecutablesAndDirectories) {
  EXPECT_EQ(std::get<std::string>(find("data", "/usr/bin:/bin")), "/bin/data");
  EXPECT_EQ(std::get<ExecFailure>(find("adir", "/usr/bin")),
            (ExecFailure{127, "exec: \"adir\": executable file not found in $PATH"}));
}

TEST_F(InitLookup, MissingIsDockers127) {
  EXPECT_EQ(std::get<ExecFailure>(find("foo")),
            (ExecFailure{127, "exec: \"foo\": executable file not found in $PATH"}));
  EXPECT_EQ(std::get<ExecFailure>(find("sh", "/nowhere")).status, 127);
  EXPECT_EQ(std::get<ExecFailure>(find("")).status, 127);
}

TEST_F(InitLookup, NamesWithSlashAreNotLookedUp) {
  EXPECT_EQ(std::get<std::string>(find("/app/run", "")), "/app/run");
  EXPECT_EQ(std::get<std::string>(find("./run", kDefaultPath, "/app")), "./run");
  EXPECT_EQ(std::get<std::string>(find("app/run", kDefaultPath, "/")), "app/run");
  // "run" alone is not in PATH even though it is in the cwd.
  EXPECT_EQ(std::get<ExecFailure>(find("run", kDefaultPath, "/app")).status, 127);
  EXPECT_EQ(std::get<ExecFailure>(find("/nope")),
            (ExecFailure{127, "exec: \"/nope\": stat /nope: no such file or directory"}));
}

TEST_F(InitLookup, NotExecutableIs126) {
  EXPECT_EQ(std::get<ExecFailure>(find("/app/notexec")),
            (ExecFailure{126, "exec: \"/app/notexec\": permission denied"}));
  EXPECT_EQ(std::get<ExecFailure>(find("/usr/bin/adir")),
            (ExecFailure{126, "exec: \"/usr/bin/adir\": is a directory"}));
}

TEST_F(InitLookup, EmptyPathElementIsTheWorkingDirectory) {
  EXPECT_EQ(std::get<std::string>(find("run", "/usr/bin::/bin", "/app")), "./run");
  EXPECT_EQ(std::get<std::string>(find("run", "/usr/bin:.", "/app")), "./run");
}

TEST(InitExec, ErrnoToDockerStatus) {
  EXPECT_EQ(exec_failure("/x", ENOENT), (ExecFailure{127, "exec /x: no such file or directory"}));
  EXPECT_EQ(exec_failure("/x", EACCES).status, 126);
  EXPECT_EQ(exec_failure("/x", ENOEXEC), (ExecFailure{126, "exec /x: exec format error"}));
}

TEST(InitSignals, Names) {
  EXPECT_EQ(parse_signal("SIGTERM"), SIGTERM);
  EXPECT_EQ(parse_signal("quit"), SIGQUIT);
  EXPECT_EQ(parse_signal("9"), SIGKILL);
  EXPECT_EQ(parse_signal("SIGRTMIN+3"), SIGRTMIN + 3);
  EXPECT_EQ(parse_signal("SIGNOPE"), std::nullopt);
  EXPECT_EQ(parse_signal("0"), std::nullopt);
  EXPECT_EQ(parse_signal("99"), std::nullopt);
  EXPECT_EQ(parse_signal(""), std::nullopt);
}

// --- users --------------------------------------------------------------------------------------

class InitUser : public ::testing::Test {
 protected:
  void SetUp() override {
    put(root_.path() / "etc/passwd",
        "root:x:0:0:root:/root:/bin/sh\n"
        "# a comment\n"
        "\n"
        "daemon:x:1:1::/usr/sbin:/usr/sbin/nologin\n"
        "app:x:1000:1000:App User:/home/app:/bin/sh\n"
        "nohome:x:1001:1001::\n"
        "broken line\n"
        "bad:x:notanumber:1::/:\n");
    put(root_.path() / "etc/group",
        "root:x:0:\n"
        "daemon:x:1:app\n"
        "app:x:1000:\n"
        "staff:x:50:app,other\n"
        "video:x:44:other,app\n"
        "nomembers:x:60:\n");
  }
  ExecUser resolve(std::string_view spec) { return resolve_user(root_.path(), spec); }
  TempDir root_{"init-user"};
};

TEST_F(InitUser, EmptyIsRootWithItsHome) {
  EXPECT_EQ(resolve(""), (ExecUser{0, 0, {}, "/root"}));
  EXPECT_EQ(resolve("root"), (ExecUser{0, 0, {}, "/root"}));
  EXPECT_EQ(resolve("0"), (ExecUser{0, 0, {}, "/root"}));
}

TEST_F(InitUser, NameGetsPasswdIdsHomeAndSupplementaryGroups) {
  EXPECT_EQ(resolve("app"), (ExecUser{1000, 1000, {1, 50, 44}, "/home/app"}));
}

TEST_F(InitUser, UidMatchesItsPasswdEntry) {
  EXPECT_EQ(resolve("1000"), (ExecUser{1000, 1000, {1, 50, 44}, "/home/app"}));
}

TEST_F(InitUser, UnknownNumericUidIsAllowed) {
  EXPECT_EQ(resolve("4242"), (ExecUser{4242, 0, {}, "/"}));
  EXPECT_EQ(resolve("4242:4343"), (ExecUser{4242, 4343, {}, "/"}));
}

TEST_F(InitUser, ExplicitGroupReplacesPrimaryAndDropsSupplementary) {
  EXPECT_EQ(resolve("app:staff"), (ExecUser{1000, 50, {}, "/home/app"}));
  EXPECT_EQ(resolve("app:50"), (ExecUser{1000, 50, {}, "/home/app"}));
  EXPECT_EQ(resolve("1000:777"), (ExecUser{1000, 777, {}, "/home/app"}));
  EXPECT_EQ(resolve("root:video"), (ExecUser{0, 44, {}, "/root"}));
  EXPECT_EQ(resolve("app:"), (ExecUser{1000, 1000, {1, 50, 44}, "/home/app"}));
}

TEST_F(InitUser, EmptyHomeIsSlash) { EXPECT_EQ(resolve("nohome").home, "/"); }

TEST_F(InitUser, UnknownNamesAreErrorsNamingThem) {
  EXPECT_EQ(error_of([&] { resolve("ghost"); }),
            "unable to find user ghost: no matching entries in passwd file");
  EXPECT_EQ(error_of([&] { resolve("app:ghosts"); }),
            "unable to find group ghosts: no matching entries in group file");
  EXPECT_EQ(error_of([&] { resolve("bad"); }),
            "unable to find user bad: no matching entries in passwd file");
}

TEST_F(InitUser, OutOfRangeIds) {
  EXPECT_NE(error_of([&] { resolve("4294967296"); }).find("out of range"), std::string::npos);
  EXPECT_NE(error_of([&] { resolve("1:99999999999999999999999"); }).find("out of range"),
            std::string::npos);
}

TEST(InitUserNoFiles, MissingPasswdAndGroupLikeDocker) {
  TempDir root("init-scratch");
  EXPECT_EQ(resolve_user(root.path(), ""), (ExecUser{0, 0, {}, "/"}));
  EXPECT_EQ(resolve_user(root.path(), "1234"), (ExecUser{1234, 0, {}, "/"}));
  EXPECT_EQ(resolve_user(root.path(), "1234:5678"), (ExecUser{1234, 5678, {}, "/"}));
  EXPECT_EQ(error_of([&] { resolve_user(root.path(), "nobody"); }),
            "unable to find user nobody: no matching entries in passwd file");
  EXPECT_EQ(error_of([&] { resolve_user(root.path(), "0:wheel"); }),
            "unable to find group wheel: no matching entries in group file");
}

// --- the per-run overrides ------------------------------------------------------------------

TEST(InitOverrides, KernelParamRoundTrip) {
  RunOverrides o;
  o.cmd = Strings{"echo", "x y"};
  std::string cmdline =
      guestabi::image_cmdline(false, guestabi::run_overrides_kernel_param(o)) + "\n";
  auto value = guestabi::kernel_param(cmdline, guestabi::kRunParam);
  ASSERT_TRUE(value);
  EXPECT_EQ(decode_run_param(*value), o);
}

TEST(InitOverrides, BlockDevice) {
  TempDir dir("init-blk");
  RunOverrides o;
  o.env.push_back("BIG=" + std::string(100000, 'v'));  // far beyond the kernel command line
  put(dir.path() / "vdb", guestabi::encode_overrides_disk(o));
  EXPECT_EQ(decode_run_param("blk:" + (dir.path() / "vdb").string()), o);
  // A device larger than the overrides (a disk rounded up to its size) reads the same.
  put(dir.path() / "vdc", guestabi::encode_overrides_disk(o) + std::string(1 << 20, '\0'));
  EXPECT_EQ(decode_run_param("blk:" + (dir.path() / "vdc").string()), o);
  // A snapshot's overrides disk always has the largest size (16 MiB): only its first 4 KiB are
  // read when the header says they hold it all (each page read is a restored guest's own, and
  // each costs it a fault).
  std::string snap = guestabi::encode_overrides_disk(RunOverrides{});
  snap.resize(guestabi::kMaxOverridesDisk, '\0');
  put(dir.path() / "vdd", snap);
  auto bytes_read = [] {  // this process's read() bytes so far
    std::string io = read_file("/proc/self/io", 4096);
    return std::stoull(io.substr(io.find("rchar: ") + 7));
  };
  const uint64_t before = bytes_read();
  EXPECT_EQ(decode_run_param("blk:" + (dir.path() / "vdd").string()), RunOverrides{});
  EXPECT_LT(bytes_read() - before, uint64_t{8192});  // 4 KiB and the read of /proc/self/io
}

TEST(InitOverrides, DecodeErrorsNameTheSource) {
  TempDir dir("init-blk");
  std::string missing = (dir.path() / "vdz").string();
  std::string e = error_of([&] { decode_run_param("blk:" + missing); });
  EXPECT_NE(e.find(missing), std::string::npos) << e;
  // The old format (bare JSON) or any other disk is refused by its magic.
  put(dir.path() / "garbage", std::string("{not json") + std::string(512, '\0'));
  e = error_of([&] { decode_run_param("blk:" + (dir.path() / "garbage").string()); });
  EXPECT_NE(e.find("garbage"), std::string::npos) << e;
  EXPECT_NE(e.find("magic"), std::string::npos) << e;
  std::string disk = guestabi::encode_overrides_disk(RunOverrides{});
  disk.replace(16, 1, "[");
  put(dir.path() / "badjson", disk);
  e = error_of([&] { decode_run_param("blk:" + (dir.path() / "badjson").string()); });
  EXPECT_NE(e.find("badjson"), std::string::npos) << e;
  EXPECT_NE(e.find("not valid JSON"), std::string::npos) << e;
  e = error_of([] { decode_run_param("!!!"); });
  EXPECT_NE(e.find("img2vm.run"), std::string::npos) << e;
  // A device larger than any overrides disk still decodes (the init reads only its start).
  disk = guestabi::encode_overrides_disk(RunOverrides{});
  disk.resize(guestabi::kMaxOverridesDisk + (1 << 20), 'x');
  put(dir.path() / "huge", disk);
  EXPECT_EQ(decode_run_param("blk:" + (dir.path() / "huge").string()), RunOverrides{});
}

// Snapshots (issue #19): with img2vm.snapshot=1 the command line is the one frozen in the
// snapshot, so the overrides come from a disk, which every restore replaces.
TEST(InitOverrides, SnapshotModeTakesThemFromADiskOnly) {
  TempDir dir("init-snap");
  RunOverrides o;
  o.cmd = Strings{"date"};
  o.entropy.assign(32, 'r');
  o.realtime_ns = 1'767'225'600'000'000'000;
  put(dir.path() / "vdb", guestabi::encode_overrides_disk(o));
  const std::string disk = guestabi::run_overrides_disk_param((dir.path() / "vdb").string());
  const std::string snap = guestabi::snapshot_param();
  EXPECT_EQ(run_overrides_from_cmdline(guestabi::image_cmdline(false, snap + " " + disk), true), o);
  EXPECT_EQ(run_overrides_from_cmdline(guestabi::image_cmdline(false, disk), false), o);

  const std::string inline_param = guestabi::run_overrides_kernel_param(o);
  EXPECT_EQ(run_overrides_from_cmdline(guestabi::image_cmdline(false, inline_param), false), o);
  EXPECT_EQ(error_of([&] {
              run_overrides_from_cmdline(guestabi::image_cmdline(false, inline_param), true);
            }),
            "run overrides: inline img2vm.run= in snapshot mode (img2vm.snapshot=1): the command "
            "line is frozen in the snapshot; they must come on a disk (img2vm.run=blk:/dev/vdX)");
  EXPECT_NE(error_of([&] {
              decode_run_param(guestabi::base64url_encode("{}"), true);
            }).find("frozen in the snapshot"),
            std::string::npos);

  EXPECT_EQ(run_overrides_from_cmdline(guestabi::image_cmdline(false), false), RunOverrides{});
  EXPECT_EQ(error_of([] { run_overrides_from_cmdline(guestabi::image_cmdline(false), true); }),
            "run overrides: snapshot mode (img2vm.snapshot=1) without img2vm.run=blk:/dev/vdX: "
            "every restore needs overrides of its own (entropy, clock)");
}

TEST(InitOverrides, ReadDeviceReadsAFileWhole) {
  TempDir dir("init-read");
  std::string content;
  for (int i = 0; i < 70000; ++i) content += static_cast<char>(i * 7 + i / 256);
  put(dir.path() / "f", content);
  const std::string path = (dir.path() / "f").string();
  EXPECT_EQ(read_device(path, 1 << 20), content);
  EXPECT_EQ(read_device(path, 1000), content.substr(0, 1000));
  EXPECT_NE(error_of([&] { read_device(path + "-missing", 10); }).find(path + "-missing"),
            std::string::npos);
}

// What read_device does with a block device, on a regular file that takes O_DIRECT (ext4 here):
// whole 64 KiB chunks, a last short one, a limit inside a sector.
TEST(InitOverrides, DirectReadsThroughAnAlignedBuffer) {
  TempDir dir("init-direct");
  std::string content;
  for (int i = 0; i < 3 * 65536 + 1536 + 100; ++i) content += static_cast<char>(i % 251);
  put(dir.path() / "f", content);
  const std::string path = (dir.path() / "f").string();
  auto direct = [&](std::size_t max) {
    img2vm::UniqueFd fd(::open(path.c_str(), O_RDONLY | O_DIRECT | O_CLOEXEC));
    if (!fd) throw std::runtime_error("O_DIRECT: " + std::string(std::strerror(errno)));
    return read_direct(fd.get(), path, max);
  };
  std::string e = error_of([&] { direct(1); });
  if (e.find("O_DIRECT: Invalid argument") == 0) GTEST_SKIP() << "no O_DIRECT on " << path;
  EXPECT_EQ(direct(1 << 20), content);
  EXPECT_EQ(direct(65536 + 700), content.substr(0, 65536 + 700));
  EXPECT_EQ(direct(content.size()), content);
}

namespace {

// A loop device over a file, detached when it goes; nullptr where loop devices are not available
// (not root, no /dev/loop-control or no node for the free device).
class LoopDevice {
 public:
  static std::unique_ptr<LoopDevice> attach(const std::string& file) {
    img2vm::UniqueFd ctl(::open("/dev/loop-control", O_RDWR | O_CLOEXEC));
    img2vm::UniqueFd backing(::open(file.c_str(), O_RDWR | O_CLOEXEC));
    if (!ctl || !backing) return nullptr;
    for (int attempt = 0; attempt < 10; ++attempt) {  // another process may take it first
      int n = ::ioctl(ctl.get(), LOOP_CTL_GET_FREE);
      if (n < 0) return nullptr;
      std::unique_ptr<LoopDevice> loop(new LoopDevice("/dev/loop" + std::to_string(n)));
      if (!loop->fd_) return nullptr;
      if (::ioctl(loop->fd_.get(), LOOP_SET_FD, backing.get()) == 0) {
        loop->attached_ = true;
        return loop;
      }
      if (errno != EBUSY) return nullptr;
    }
    return nullptr;
  }
  ~LoopDevice() {
    if (attached_) ::ioctl(fd_.get(), LOOP_CLR_FD, 0);
  }
  const std::string& path() const { return path_; }

 private:
  explicit LoopDevice(std::string path)
      : path_(std::move(path)), fd_(::open(path_.c_str(), O_RDWR | O_CLOEXEC)) {}
  std::string path_;
  img2vm::UniqueFd fd_;
  bool attached_ = false;
};

}  // namespace

// A restored VM's page cache holds the saved VM's view of the overrides device; the disk under
// it is another file now. A loop device shows the same: its own cache keeps what was read
// through it after the file beneath changed. The init reads past that cache.
TEST(InitOverrides, ABlockDeviceIsReadPastItsPageCache) {
  TempDir dir("init-loop");
  RunOverrides saved, restored;
  saved.cmd = Strings{"saved"};
  restored.cmd = Strings{"restored"};
  restored.entropy.assign(64, 'n');
  const std::string old_disk = guestabi::encode_overrides_disk(saved);
  std::string new_disk = guestabi::encode_overrides_disk(restored);
  ASSERT_EQ(old_disk.size(), new_disk.size());
  const fs::path file = dir.path() / "overrides.img";
  put(file, old_disk);
  auto loop = LoopDevice::attach(file.string());
  if (!loop) GTEST_SKIP() << "no loop device here";
  EXPECT_EQ(read_file(loop->path(), 1 << 20), old_disk);  // now in the device's page cache

  img2vm::UniqueFd backing(::open(file.c_str(), O_WRONLY | O_CLOEXEC));
  ASSERT_TRUE(backing);
  ASSERT_EQ(::pwrite(backing.get(), new_disk.data(), new_disk.size(), 0), ssize_t(new_disk.size()));
  EXPECT_EQ(read_file(loop->path(), 1 << 20), old_disk) << "the cached pages are the old disk's";
  EXPECT_EQ(read_device(loop->path(), 1 << 20), new_disk);
  EXPECT_EQ(decode_run_param("blk:" + loop->path(), true), restored);
}

// --- generated files --------------------------------------------------------------------------

TEST(InitGuestFiles, WhenToGenerate) {
  TempDir dir("init-etc");
  fs::path p = dir.path();
  EXPECT_TRUE(needs_generated_file(p / "missing"));
  put(p / "empty", "");
  EXPECT_TRUE(needs_generated_file(p / "empty"));
  put(p / "image", "1.2.3.4 db\n");
  EXPECT_FALSE(needs_generated_file(p / "image"));
  put(p / "ours", hosts_content("old"));
  EXPECT_TRUE(needs_generated_file(p / "ours"));
  fs::create_symlink("../run/systemd/resolve/stub-resolv.conf", p / "dangling");
  EXPECT_TRUE(needs_generated_file(p / "dangling"));
  fs::create_symlink("image", p / "link");
  EXPECT_FALSE(needs_generated_file(p / "link"));
  fs::create_directories(p / "adir");
  EXPECT_FALSE(needs_generated_file(p / "adir"));
}

// The generated files are written in place when they exist as a file of one link (no inode made
// or freed: cheaper for a VM resumed from a snapshot), else replaced: a symlink is not followed,
// another link of a file is not written through.
TEST(InitGuestFiles, RewriteInPlaceOnlyAFileOfItsOwn) {
  TempDir dir("init-rewrite");
  const fs::path p = dir.path();
  auto inode = [](const fs::path& f) {
    struct stat st {};
    return ::lstat(f.c_str(), &st) == 0 ? st.st_ino : ino_t(0);
  };
  put(p / "hosts", std::string(kGeneratedMarker) + "\n" + std::string(100, 'x'));
  ::chmod((p / "hosts").c_str(), 0600);
  const ino_t before = inode(p / "hosts");
  rewrite_file((p / "hosts").string(), "short\n", 0644);
  EXPECT_EQ(inode(p / "hosts"), before);
  EXPECT_EQ(read_file((p / "hosts").string(), 4096), "short\n");
  EXPECT_EQ(fs::status(p / "hosts").permissions(), fs::perms(0644));
  rewrite_file((p / "hosts").string(), std::string(300, 'y'), 0644);
  EXPECT_EQ(read_file((p / "hosts").string(), 4096), std::string(300, 'y'));
  EXPECT_EQ(inode(p / "hosts"), before);

  rewrite_file((p / "missing").string(), "made\n", 0644);
  EXPECT_EQ(read_file((p / "missing").string(), 4096), "made\n");

  put(p / "target", "keep");
  fs::create_symlink(p / "target", p / "link");
  rewrite_file((p / "link").string(), "new\n", 0644);
  EXPECT_FALSE(fs::is_symlink(p / "link"));
  EXPECT_EQ(read_file((p / "link").string(), 4096), "new\n");
  EXPECT_EQ(read_file((p / "target").string(), 4096), "keep");

  put(p / "shared", "other file's bytes");
  fs::create_hard_link(p / "shared", p / "alias");
  rewrite_file((p / "alias").string(), "mine\n", 0644);
  EXPECT_EQ(read_file((p / "alias").string(), 4096), "mine\n");
  EXPECT_EQ(read_file((p / "shared").string(), 4096), "other file's bytes");
  EXPECT_FALSE(fs::exists(p / "hosts.img2vm-new"));
}

TEST(InitGuestFiles, Contents) {
  std::string hosts = hosts_content("box");
  EXPECT_TRUE(hosts.starts_with(kGeneratedMarker));
  EXPECT_NE(hosts.find("127.0.0.1\tlocalhost\n"), std::string::npos);
  EXPECT_NE(hosts.find("\tbox\n"), std::string::npos);
  EXPECT_EQ(resolv_conf_content({"1.1.1.1", "8.8.8.8"}),
            std::string(kGeneratedMarker) + "\nnameserver 1.1.1.1\nnameserver 8.8.8.8\n");
  EXPECT_EQ(hostname_content("box"), "box\n");
}

TEST(InitGuestFiles, Hostnames) {
  EXPECT_TRUE(valid_hostname("box"));
  EXPECT_TRUE(valid_hostname("a1b2c3d4e5f6"));
  EXPECT_TRUE(valid_hostname("web-1.example.com"));
  EXPECT_FALSE(valid_hostname(""));
  EXPECT_FALSE(valid_hostname("-x"));
  EXPECT_FALSE(valid_hostname("x-"));
  EXPECT_FALSE(valid_hostname("a..b"));
  EXPECT_FALSE(valid_hostname("has space"));
  EXPECT_FALSE(valid_hostname(std::string(65, 'a')));
}

TEST(InitGuestFiles, HostsMapsTheHostNameToTheGuestAddress) {
  std::string hosts = hosts_content("web", "10.0.2.15");
  EXPECT_NE(hosts.find("10.0.2.15\tweb\n"), std::string::npos) << hosts;
  EXPECT_EQ(hosts.find("127.0.1.1"), std::string::npos) << hosts;
  EXPECT_NE(hosts_content("web").find("127.0.1.1\tweb\n"), std::string::npos);
}

// --- the overrides' mounts ------------------------------------------------------------------

// MountSpec's fields: type, tag, target, readonly, size, mode.
using MountSpec = guestabi::MountSpec;
constexpr auto kTmpfs = MountSpec::Type::kTmpfs;
constexpr auto kVirtiofs = MountSpec::Type::kVirtiofs;

TEST(InitMounts, TmpfsDataSizeInBytesAndOctalModeDefaulting1777) {
  EXPECT_EQ(tmpfs_data(0, 0), "mode=1777");
  EXPECT_EQ(tmpfs_data(65536, 0), "size=65536,mode=1777");
  EXPECT_EQ(tmpfs_data(1 << 20, 0700), "size=1048576,mode=700");
  EXPECT_EQ(tmpfs_data(0, 01750), "mode=1750");
  EXPECT_EQ(tmpfs_data(0, 07777), "mode=7777");
  EXPECT_EQ(tmpfs_data(uint64_t(1) << 50, 1), "size=1125899906842624,mode=1");
}

TEST(InitMounts, TmpfsIsNosuidNodevAndReadonlyWhenAsked) {
  EXPECT_EQ(mount_call(MountSpec{kTmpfs, "", "/scratch", false, 4096, 0755}),
            (MountCall{"tmpfs", "tmpfs", MS_NOSUID | MS_NODEV, "size=4096,mode=755"}));
  EXPECT_EQ(mount_call(MountSpec{kTmpfs, "", "/ro", true, 0, 0}),
            (MountCall{"tmpfs", "tmpfs", MS_NOSUID | MS_NODEV | MS_RDONLY, "mode=1777"}));
  EXPECT_EQ(mount_name(MountSpec{kTmpfs, "", "/ro", true, 0, 0}), "tmpfs");
}

TEST(InitMounts, VirtiofsMountsTheTagWithNoOptions) {
  EXPECT_EQ(mount_call(MountSpec{kVirtiofs, "share0", "/data", false, 0, 0}),
            (MountCall{"share0", "virtiofs", 0, ""}));
  EXPECT_EQ(mount_call(MountSpec{kVirtiofs, "share1", "/etc/app", true, 0, 0}),
            (MountCall{"share1", "virtiofs", MS_RDONLY, ""}));
  EXPECT_EQ(mount_name(MountSpec{kVirtiofs, "share1", "/x", false, 0, 0}), "virtiofs 'share1'");
}

TEST(InitMounts, ErrorsSayWhatTheyMeanForVirtiofs) {
  EXPECT_EQ(mount_error_text(MountSpec{kVirtiofs, "t", "/x", false, 0, 0}, ENODEV),
            std::string(std::strerror(ENODEV)) + " (the guest kernel has no virtio-fs)");
  EXPECT_EQ(mount_error_text(MountSpec{kVirtiofs, "t", "/x", false, 0, 0}, EINVAL),
            std::string(std::strerror(EINVAL)) + " (no virtio-fs device has this tag)");
  EXPECT_EQ(mount_error_text(MountSpec{kVirtiofs, "t", "/x", false, 0, 0}, EBUSY),
            std::strerror(EBUSY));
  EXPECT_EQ(mount_error_text(MountSpec{kTmpfs, "", "/x", false, 0, 0}, EINVAL),
            std::strerror(EINVAL));
}

TEST(InitMounts, PathPrefixesOutermostFirst) {
  EXPECT_EQ(path_prefixes("/a"), Strings{"/a"});
  EXPECT_EQ(path_prefixes("/a/b/c"), (Strings{"/a", "/a/b", "/a/b/c"}));
  EXPECT_EQ(path_prefixes("/"), Strings{});
  EXPECT_EQ(path_prefixes(""), Strings{});
  EXPECT_EQ(path_prefixes("/srv/app/"), (Strings{"/srv", "/srv/app"}));
  EXPECT_EQ(path_prefixes("/srv//app"), (Strings{"/srv", "/srv//app"}));
}

TEST(InitMounts, MakeDirectoriesCreatesMissingParents0755) {
  TempDir dir("init-mkdirs");
  const fs::path target = dir.path() / "a/b/c";
  const mode_t old_umask = ::umask(022);  // the init's (the kernel's default)
  make_directories(target.string(), 0755);
  ::umask(old_umask);
  for (const fs::path& p : {dir.path() / "a", dir.path() / "a/b", target}) {
    struct stat st {};
    ASSERT_EQ(::stat(p.c_str(), &st), 0) << p;
    EXPECT_TRUE(S_ISDIR(st.st_mode)) << p;
    EXPECT_EQ(st.st_mode & 07777, 0755u) << p;
  }
  make_directories(target.string(), 0755);  // existing directories are fine
  // A symlink to a directory on the way is followed, as mount(2) follows it.
  fs::create_directory_symlink("a/b", dir.path() / "link");
  make_directories((dir.path() / "link/d").string(), 0755);
  EXPECT_TRUE(fs::is_directory(dir.path() / "a/b/d"));
}

TEST(InitMounts, MakeDirectoriesRefusesANonDirectoryOnTheWay) {
  TempDir dir("init-mkdirs");
  put(dir.path() / "file", "x");
  const std::string file = (dir.path() / "file").string();
  for (const std::string& target : {file, file + "/below"}) {
    try {
      make_directories(target, 0755);
      FAIL() << "made " << target;
    } catch (const NotADirectory& e) {
      EXPECT_EQ(e.path, file);
      EXPECT_EQ(std::string(e.what()), file + " exists and is not a directory");
    }
  }
  fs::create_symlink("nowhere", dir.path() / "dangling");
  EXPECT_EQ(error_of([&] { make_directories((dir.path() / "dangling/x").string(), 0755); }),
            "creating " + (dir.path() / "dangling").string() + ": No such file or directory");
  EXPECT_FALSE(fs::exists(dir.path() / "nowhere"));
}

// A file mount's target is resolved inside the root as crun resolves one: ".." and absolute
// symlinks stay inside it, a missing target is created (parents 0755, the file empty), a
// dangling symlink there is replaced; nothing outside the root is created.
TEST(InitMounts, FileTargetsResolveInsideTheRoot) {
  TempDir dir("init-file-target");
  const fs::path root = dir.path() / "root", outside = dir.path() / "outside";
  fs::create_directories(root / "inside");
  fs::create_directories(root / "outside");
  fs::create_directories(outside);
  img2vm::UniqueFd root_fd(::open(root.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC));
  ASSERT_TRUE(root_fd);
  auto same = [](const UniqueFd& fd, const fs::path& p) {
    struct stat a {
    }, b{};
    return ::fstat(fd.get(), &a) == 0 && ::lstat(p.c_str(), &b) == 0 && a.st_ino == b.st_ino &&
           a.st_dev == b.st_dev;
  };
  const mode_t old_umask = ::umask(022);
  UniqueFd fd = open_file_target(root_fd.get(), "/etc/app/app.conf");
  ::umask(old_umask);
  EXPECT_TRUE(same(fd, root / "etc/app/app.conf"));
  EXPECT_TRUE(fs::is_regular_file(root / "etc/app/app.conf"));
  EXPECT_EQ(fs::file_size(root / "etc/app/app.conf"), 0u);
  EXPECT_EQ(fs::status(root / "etc/app").permissions(), fs::perms(0755));
  EXPECT_EQ(fs::status(root / "etc/app/app.conf").permissions(), fs::perms(0644));
  // An existing file is opened as it is.
  put(root / "etc/hosts", "image's");
  EXPECT_TRUE(same(open_file_target(root_fd.get(), "/etc/hosts"), root / "etc/hosts"));
  // ".." stops at the root; an absolute symlink is taken from the root.
  fs::create_directory_symlink("../../../outside", root / "up");
  EXPECT_TRUE(same(open_file_target(root_fd.get(), "/up/f"), root / "outside/f"));
  fs::create_directory_symlink(outside, root / "abs");  // the host's path: not in the root
  EXPECT_NE(error_of([&] { open_file_target(root_fd.get(), "/abs/g"); }).find("/abs"),
            std::string::npos);
  fs::create_directory_symlink("/inside", root / "in");
  EXPECT_TRUE(same(open_file_target(root_fd.get(), "/in/h"), root / "inside/h"));
  EXPECT_TRUE(fs::is_empty(outside)) << "created outside the root";
  // The final component: a symlink is followed inside the root, a dangling one replaced.
  put(root / "inside/real", "r");
  fs::create_symlink("/inside/real", root / "etc/link");
  EXPECT_TRUE(same(open_file_target(root_fd.get(), "/etc/link"), root / "inside/real"));
  fs::create_symlink("/run/systemd/resolve/stub-resolv.conf", root / "etc/resolv.conf");
  EXPECT_TRUE(same(open_file_target(root_fd.get(), "/etc/resolv.conf"), root / "etc/resolv.conf"));
  EXPECT_TRUE(fs::is_regular_file(fs::symlink_status(root / "etc/resolv.conf")));
  EXPECT_FALSE(fs::exists(root / "run"));
  // A directory, or a file on the way, cannot be a file mount's target.
  EXPECT_EQ(error_of([&] { open_file_target(root_fd.get(), "/etc"); }), "/etc is a directory");
  EXPECT_EQ(error_of([&] { open_file_target(root_fd.get(), "/etc/hosts/x"); }),
            "/etc/hosts/x: Not a directory");
}

// The init's placement, for real in a mount namespace of a child of the test (root): each file
// mount is a copy (content, mode, owner) on a tmpfs bound over its target, read-only when asked;
// the staging tmpfs is gone from its directory afterwards.
TEST(InitMounts, FileMountsAreCopiesBoundOverTheirTargets) {
  if (::geteuid() != 0) GTEST_SKIP() << "not root (a mount namespace of the test's own)";
  TempDir dir("init-file-mounts");
  const fs::path root = dir.path() / "root", staging = dir.path() / "staging";
  put(root / "etc/hosts", "the image's\n");
  int p[2];
  ASSERT_EQ(::pipe2(p, O_CLOEXEC), 0);
  img2vm::UniqueFd rd(p[0]), wr(p[1]);
  pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    std::string out;
    auto line = [&](const std::string& l) { out += l + "\n"; };
    if (::unshare(CLONE_NEWNS) != 0 ||
        ::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0) {
      out = std::string("skip: unshare: ") + std::strerror(errno);
    } else {
      try {
        guestabi::MountSpec conf;
        conf.type = guestabi::MountSpec::Type::kFile;
        conf.target = "/etc/app.conf";
        conf.content = "key = value\n";
        conf.mode = 0640;
        conf.uid = 123;
        conf.gid = 456;
        conf.readonly = true;
        guestabi::MountSpec hosts = conf;
        hosts.target = "/etc/hosts";
        hosts.content = "10.88.0.7\tweb\n";
        hosts.mode = 0644;
        hosts.uid = hosts.gid = 0;
        hosts.readonly = false;
        UniqueFd root_fd(::open(root.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC));
        {
          FileMounts files(staging.string());
          files.place(root_fd.get(), conf);
          files.place(root_fd.get(), hosts);
        }
        for (const char* f : {"etc/app.conf", "etc/hosts"}) {
          std::ifstream in(root / f);
          std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
          struct stat st {};
          ::stat((root / f).c_str(), &st);
          int w = ::open((root / f).c_str(), O_WRONLY | O_CLOEXEC);
          line(std::string(f) + ": " + text.substr(0, text.size() - 1) + " mode " +
               std::to_string(st.st_mode & 07777) + " owner " + std::to_string(st.st_uid) + ":" +
               std::to_string(st.st_gid) + " write " +
               (w >= 0 ? "ok" : std::string(std::strerror(errno))));
          if (w >= 0) ::close(w);
        }
        line(std::string("staging ") + (fs::exists(staging) ? "left" : "gone"));
      } catch (const std::exception& e) {
        out = std::string("error: ") + e.what();
      }
    }
    (void)!::write(wr.get(), out.data(), out.size());
    ::_exit(0);
  }
  wr.reset();
  std::string out;
  char buf[4096];
  for (ssize_t n; (n = ::read(rd.get(), buf, sizeof buf)) > 0;) out.append(buf, size_t(n));
  int st = 0;
  ::waitpid(child, &st, 0);
  if (out.rfind("skip: ", 0) == 0) GTEST_SKIP() << out;
  EXPECT_EQ(out,
            "etc/app.conf: key = value mode 416 owner 123:456 write Read-only file system\n"
            "etc/hosts: 10.88.0.7\tweb mode 420 owner 0:0 write ok\n"
            "staging gone\n");
  // Outside the child's namespace the image's file is untouched.
  std::ifstream in(root / "etc/hosts");
  EXPECT_EQ(std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>()),
            "the image's\n");
  EXPECT_TRUE(fs::exists(root / "etc/app.conf")) << "the mount point is created";
}

TEST(InitNetwork, PrefixNetmask) {
  EXPECT_EQ(ntohl(prefix_netmask(24)), 0xffffff00u);
  EXPECT_EQ(ntohl(prefix_netmask(32)), 0xffffffffu);
  EXPECT_EQ(ntohl(prefix_netmask(0)), 0u);
  EXPECT_EQ(ntohl(prefix_netmask(17)), 0xffff8000u);
  EXPECT_THROW(prefix_netmask(33), Error);
}

// A pod's network as Calico or Cilium make it: a /32 address behind 169.254.1.1, reached on the
// link. Configured for real on a veth in a network namespace of a child of the test (root).
TEST(InitNetwork, AGatewayOutsideTheSubnetIsReachedOnTheLink) {
  if (::geteuid() != 0) GTEST_SKIP() << "not root (a network namespace of the test's own)";
  int p[2];
  ASSERT_EQ(::pipe2(p, O_CLOEXEC), 0);
  img2vm::UniqueFd rd(p[0]), wr(p[1]);
  pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    std::string out;
    if (::unshare(CLONE_NEWNET) != 0) {
      out = std::string("skip: unshare: ") + std::strerror(errno);
    } else if (std::system("ip link add eth9 type veth peer name eth8 >/dev/null 2>&1") != 0) {
      out = "skip: ip link add (iproute2, veth) failed";
    } else {
      try {
        configure_interface(
            img2vm::guestabi::NetConfig{"eth9", "10.244.1.5", 32, "169.254.1.1", 0, ""});
        std::ifstream in("/proc/net/route");
        out.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
      } catch (const std::exception& e) {
        out = std::string("error: ") + e.what();
      }
    }
    (void)!::write(wr.get(), out.data(), out.size());
    ::_exit(0);
  }
  wr.reset();
  std::string out;
  char buf[4096];
  for (ssize_t n; (n = ::read(rd.get(), buf, sizeof buf)) > 0;) out.append(buf, size_t(n));
  int st = 0;
  ::waitpid(child, &st, 0);
  if (out.rfind("skip: ", 0) == 0) GTEST_SKIP() << out;
  // /proc/net/route: Iface, Destination, Gateway (hex, little-endian), Flags, ...
  EXPECT_NE(out.find("eth9\t0101FEA9\t00000000\t0005"), std::string::npos) << out;  // UP|HOST
  EXPECT_NE(out.find("eth9\t00000000\t0101FEA9\t0003"), std::string::npos) << out;  // UP|GATEWAY
}

TEST(InitNetwork, MissingInterfaceIsAClearError) {
  // Fails before touching anything real: no interface of this name exists on any host.
  try {
    configure_interface(guestabi::NetConfig{"img2vm-none0", "10.0.2.15", 24, "", 0, ""});
    FAIL() << "configured a missing interface";
  } catch (const Error& e) {
    std::string m = e.what();
    EXPECT_NE(m.find("img2vm-none0"), std::string::npos) << m;
  }
}

namespace img2vm::init {
namespace {

// Runs `body` in a forked child (so that limits and no_new_privs stay there); its exit status.
int in_child(const std::function<int()>& body) {
  pid_t pid = ::fork();
  if (pid == 0) {
    int rc = 99;
    try {
      rc = body();
    } catch (...) {
      rc = 98;
    }
    ::_exit(rc);
  }
  int st = 0;
  ::waitpid(pid, &st, 0);
  return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

TEST(ProcessLimits, RlimitsAreSetInOrder) {
  EXPECT_EQ(in_child([] {
              apply_rlimits({{"RLIMIT_NOFILE", 100, 200}, {"RLIMIT_CORE", 0, 0}});
              struct rlimit r {};
              ::getrlimit(RLIMIT_NOFILE, &r);
              if (r.rlim_cur != 100 || r.rlim_max != 200) return 1;
              ::getrlimit(RLIMIT_CORE, &r);
              return r.rlim_cur == 0 && r.rlim_max == 0 ? 0 : 2;
            }),
            0);
  // A limit the kernel refuses (raising a hard limit without CAP_SYS_RESOURCE) names it.
  EXPECT_EQ(in_child([] {
              apply_rlimits({{"RLIMIT_NOFILE", 10, 20}});
              if (::geteuid() == 0 && ::setresuid(65534, 65534, 65534) != 0) return 5;
              try {
                apply_rlimits({{"RLIMIT_NOFILE", 10, 100000}});
              } catch (const Error& e) {
                return std::string(e.what()).rfind("setrlimit RLIMIT_NOFILE 10 100000", 0) == 0 ? 0
                                                                                                : 3;
              }
              return 4;
            }),
            0);
  EXPECT_EQ(in_child([] {
              try {
                apply_rlimits({{"RLIMIT_NOPE", 1, 1}});
              } catch (const Error&) {
                return 0;
              }
              return 1;
            }),
            0);
}

TEST(ProcessLimits, NoNewPrivilegesIsSet) {
  EXPECT_EQ(in_child([] {
              if (::prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) != 0) return 1;
              set_no_new_privileges();
              return ::prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) == 1 ? 0 : 2;
            }),
            0);
}

TEST(ProcessLimits, ExtraGroupsAreAddedOnce) {
  EXPECT_EQ(with_extra_groups({1000, 10}, {10, 20, 20, 0}), (std::vector<gid_t>{1000, 10, 20, 0}));
  EXPECT_EQ(with_extra_groups({}, {}), std::vector<gid_t>{});
}

}  // namespace
}  // namespace img2vm::init
