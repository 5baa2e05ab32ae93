// The guest init booted for real: our kernel under qemu TCG (-M microvm), a root filesystem
// assembled from busybox-static plus the image's files, /.img2vm/init and /.img2vm/config.json,
// made into ext4 by mke2fs -d. The workload's exit status comes back through qemu's
// isa-debug-exit on the EXIT port (0xf4), which makes qemu exit with ((status << 1) | 1) & 0xff;
// a second one on INIT_FAIL (0xf5) catches init failures. See docs/guest-abi.md.
//
// Needs a guest kernel: $IMG2VM_KERNEL, else the newest ~/.cache/img2vm/kernel/*/vmlinux
// (guest/kernel/build.sh). Without one every test here is skipped, saying so.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "img2vm/base/fd.hpp"
#include "img2vm/guestabi/cmdline.hpp"
#include "img2vm/guestabi/config.hpp"
#include "img2vm/guestabi/overrides_disk.hpp"
#include "process.hpp"

using namespace img2vm;
using img2vm::guestabi::RunOverrides;
using img2vm::guestabi::RuntimeConfig;
using img2vm::testing::run_command;
namespace fs = std::filesystem;
using Strings = std::vector<std::string>;

namespace {

std::optional<fs::path> find_kernel() {
  if (const char* k = std::getenv("IMG2VM_KERNEL"); k && *k) return fs::path(k);
  const char* home = std::getenv("HOME");
  if (!home) return std::nullopt;
  fs::path dir = fs::path(home) / ".cache/img2vm/kernel";
  std::error_code ec;
  std::optional<fs::path> best;
  fs::file_time_type best_time{};
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    fs::path v = entry.path() / "vmlinux";
    if (!fs::exists(v, ec)) continue;
    auto t = fs::last_write_time(v, ec);
    if (!best || t > best_time) {
      best = v;
      best_time = t;
    }
  }
  return best;
}

void put(const fs::path& p, std::string_view content, mode_t mode = 0644) {
  fs::create_directories(p.parent_path());
  std::ofstream(p, std::ios::binary | std::ios::trunc) << content;
  ASSERT_EQ(::chmod(p.c_str(), mode), 0) << p;
}

constexpr const char* kApplets[] = {"sh",    "echo", "id",   "whoami", "ls",       "cat",   "sleep",
                                    "kill",  "pwd",  "env",  "printf", "test",     "[",     "true",
                                    "false", "stat", "grep", "wc",     "hostname", "mount", "ps",
                                    "awk",   "head", "tr",   "ip",     "wget",     "chmod", "date"};

struct Boot {
  int qemu_exit = -1;
  std::string console;
  bool timed_out = false;
  // The byte the guest wrote to an isa-debug-exit port, as far as qemu's exit code keeps it (7
  // bits).
  std::optional<int> status() const {
    if (qemu_exit < 0 || (qemu_exit & 1) == 0) return std::nullopt;
    return qemu_exit >> 1;
  }
};

int qemu_code_for(int status) { return ((status << 1) | 1) & 0xff; }

class InitBoot : public ::testing::Test {
 protected:
  void SetUp() override {
    kernel_ = find_kernel();
    if (!kernel_)
      GTEST_SKIP() << "no guest kernel: build one with guest/kernel/build.sh "
                      "(~/.cache/img2vm/kernel/*/vmlinux) "
                      "or set IMG2VM_KERNEL";
    if (img2vm::testing::find_program("qemu-system-x86_64").empty() || !fs::exists("/bin/busybox"))
      GTEST_SKIP() << "needs qemu-system-x86_64 and busybox-static (scripts/setup.sh)";
    root_ = work_.path() / "root";
    for (const char* d : {"bin", "etc", "tmp", ".img2vm", "root"})
      fs::create_directories(root_ / d);
    ::chmod((root_ / "tmp").c_str(), 01777);
    fs::copy_file("/bin/busybox", root_ / "bin/busybox");
    for (const char* a : kApplets) fs::create_symlink("busybox", root_ / "bin" / a);
    fs::copy_file(IMG2VM_INIT_BINARY, root_ / ".img2vm/init");
    put(root_ / "etc/passwd",
        "root:x:0:0:root:/root:/bin/sh\n"
        "app:x:1000:1000:App:/home/app:/bin/sh\n");
    put(root_ / "etc/group",
        "root:x:0:\n"
        "staff:x:50:app\n"
        "video:x:44:app\n"
        "app:x:1000:\n");
  }

  void write_config(const RuntimeConfig& c) {
    put(root_ / ".img2vm/config.json", guestabi::to_json(c));
  }

  // Boots the rootfs; `append` is added to the kernel command line, `extra_disk` becomes the
  // second virtio block device.
  Boot boot(const std::string& append = "",
            const std::optional<fs::path>& extra_disk = std::nullopt) {
    fs::path img = work_.path() / "rootfs.ext4";
    fs::remove(img);
    auto mk = run_command(
        {"mke2fs", "-q", "-F", "-t", "ext4", "-d", root_.string(), img.string(), "64M"});
    EXPECT_EQ(mk.exit_code, 0) << mk.describe();
    Strings argv = {"qemu-system-x86_64",
                    "-M",
                    "microvm,acpi=off" + machine_options_,
                    "-accel",
                    "tcg",
                    "-m",
                    "256",
                    "-nographic",
                    "-no-reboot",
                    "-nodefaults",
                    "-serial",
                    "stdio",
                    "-kernel",
                    kernel_->string(),
                    "-append",
                    "console=ttyS0 quiet root=/dev/vda rw init=/.img2vm/init reboot=k panic=-1 "
                    "no_timer_check " +
                        append,
                    "-drive",
                    "id=d0,file=" + img.string() + ",format=raw,if=none",
                    "-device",
                    "virtio-blk-device,drive=d0"};
    if (extra_disk) {
      argv.insert(
          argv.end(),
          {"-drive", "id=d1,file=" + extra_disk->string() + ",format=raw,if=none,readonly=on",
           "-device", "virtio-blk-device,drive=d1"});
    }
    argv.insert(argv.end(), extra_qemu_.begin(), extra_qemu_.end());
    argv.insert(argv.end(), {"-device", "isa-debug-exit,iobase=0xf4,iosize=1", "-device",
                             "isa-debug-exit,iobase=0xf5,iosize=1"});
    img2vm::testing::RunOptions opts;
    opts.timeout = std::chrono::seconds(180);
    auto r = run_command(argv, opts);
    Boot b{r.exit_code, r.out + r.err, r.timed_out};
    EXPECT_FALSE(b.timed_out) << "qemu timed out; console:\n" << b.console;
    return b;
  }

  Boot run_sh(const std::string& script, RuntimeConfig c = {}) {
    c.cmd = {"sh", "-c", script};
    write_config(c);
    return boot();
  }

  Strings extra_qemu_;           // more qemu arguments (devices)
  std::string machine_options_;  // appended to -M microvm,acpi=off
  std::optional<fs::path> kernel_;
  TempDir work_{"init-boot"};
  fs::path root_;
};

bool has(const std::string& hay, const std::string& needle) {
  return hay.find(needle) != std::string::npos;
}

TEST_F(InitBoot, ExitStatusReachesTheHost) {
  auto b = run_sh("exit 3");
  EXPECT_EQ(b.qemu_exit, qemu_code_for(3)) << b.console;
  EXPECT_EQ(b.status(), 3);
  b = run_sh("exit 0");
  EXPECT_EQ(b.status(), 0) << b.console;
}

TEST_F(InitBoot, KilledBySignalIs128PlusN) {
  // 143 for SIGTERM; qemu's exit code keeps only 7 bits of it.
  auto b = run_sh("kill -KILL $$");
  EXPECT_EQ(b.qemu_exit, qemu_code_for(128 + 9)) << b.console;
}

TEST_F(InitBoot, EnvWithSpacesAndEqualsAndDockerDefaults) {
  RuntimeConfig c;
  c.env = {"GREETING=hello  world", "EQ=a=b=c", "EMPTY="};
  c.hostname = "envbox";
  auto b = run_sh("printf '[%s][%s][%s]\\n' \"$GREETING\" \"$EQ\" \"${EMPTY-unset}\"; env", c);
  EXPECT_EQ(b.status(), 0) << b.console;
  EXPECT_TRUE(has(b.console, "[hello  world][a=b=c][]\n")) << b.console;
  EXPECT_TRUE(has(b.console, "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n"))
      << b.console;
  EXPECT_TRUE(has(b.console, "HOSTNAME=envbox\n")) << b.console;
  EXPECT_TRUE(has(b.console, "HOME=/root\n")) << b.console;
  EXPECT_FALSE(has(b.console, "TERM=")) << b.console;
  // Without a tty the output is not translated (no \r before \n), as through docker's pipes.
  // Only the workload's lines are looked at: the console also carries the guest kernel's own
  // messages (a slow emulated timer check can print one while the workload runs), and the
  // kernel's serial console writes those with \r\n.
  EXPECT_FALSE(has(b.console, "[hello  world][a=b=c][]\r")) << b.console;
  EXPECT_FALSE(has(b.console, "HOSTNAME=envbox\r")) << b.console;
  EXPECT_FALSE(has(b.console, "HOME=/root\r")) << b.console;
}

TEST_F(InitBoot, UserByName) {
  RuntimeConfig c;
  c.user = "app";
  auto b = run_sh("whoami; id; echo HOME=$HOME; pwd", c);
  EXPECT_EQ(b.status(), 0) << b.console;
  EXPECT_TRUE(has(b.console, "app\n")) << b.console;
  EXPECT_TRUE(has(b.console, "uid=1000(app) gid=1000(app)")) << b.console;
  EXPECT_TRUE(has(b.console, "50(staff)")) << b.console;
  EXPECT_TRUE(has(b.console, "44(video)")) << b.console;
  EXPECT_TRUE(has(b.console, "HOME=/home/app\n")) << b.console;
}

TEST_F(InitBoot, NumericUserAndGroupNotInPasswd) {
  RuntimeConfig c;
  c.user = "4242:4343";
  auto b = run_sh("id -u; id -g; id -G; echo HOME=$HOME", c);
  EXPECT_EQ(b.status(), 0) << b.console;
  EXPECT_TRUE(has(b.console, "4242\n4343\n")) << b.console;
  EXPECT_TRUE(has(b.console, "HOME=/\n")) << b.console;
}

TEST_F(InitBoot, UnknownUserIsAnInitFailure) {
  RuntimeConfig c;
  c.user = "ghost";
  auto b = run_sh("echo should not run", c);
  EXPECT_TRUE(has(
      b.console,
      "img2vm-init: user \"ghost\": unable to find user ghost: no matching entries in passwd file"))
      << b.console;
  EXPECT_FALSE(has(b.console, "should not run")) << b.console;
  EXPECT_EQ(b.status(), 5) << b.console;  // INIT_FAIL code 5 (user), through the 0xf5 port
}

TEST_F(InitBoot, WorkingDirCreatedRootOwned) {
  RuntimeConfig c;
  c.working_dir = "/srv/app/data";
  c.user = "app";
  auto b = run_sh("pwd; stat -c '%u:%g %a' .; touch x 2>/dev/null || echo not-writable", c);
  EXPECT_EQ(b.status(), 0) << b.console;
  EXPECT_TRUE(has(b.console, "/srv/app/data\n0:0 755\n")) << b.console;
}

TEST_F(InitBoot, MissingCommandIs127WithDockersMessage) {
  RuntimeConfig c;
  c.cmd = {"nosuchcmd", "arg"};
  write_config(c);
  auto b = boot();
  EXPECT_EQ(b.status(), 127) << b.console;
  EXPECT_TRUE(has(b.console, "exec: \"nosuchcmd\": executable file not found in $PATH"))
      << b.console;
}

TEST_F(InitBoot, NotExecutableIs126) {
  RuntimeConfig c;
  c.cmd = {"/etc/passwd"};
  write_config(c);
  auto b = boot();
  EXPECT_EQ(b.status(), 126) << b.console;
  EXPECT_TRUE(has(b.console, "exec: \"/etc/passwd\": permission denied")) << b.console;
}

TEST_F(InitBoot, OrphansAreReaped) {
  // Orphans re-parent to PID 1 and exit while the workload still runs; only the init can reap
  // them. A zombie keeps its /proc entry.
  auto b = run_sh(
      "sh -c 'sleep 1 & echo $! > /tmp/o1; sleep 1 & echo $! > /tmp/o2; exit 0'; "
      "sh -c '(sleep 1; exit 7) & echo $! > /tmp/o3'; "
      "sleep 3; "
      "for f in /tmp/o1 /tmp/o2 /tmp/o3; do p=$(cat $f); if [ -e /proc/$p ]; then echo \"left $p "
      "$(grep State /proc/$p/status)\"; fi; done; "
      "z=$(grep -l '^State:.*Z' /proc/[0-9]*/status 2>/dev/null | wc -l); echo zombies=$z");
  EXPECT_EQ(b.status(), 0) << b.console;
  EXPECT_TRUE(has(b.console, "zombies=0\n")) << b.console;
  EXPECT_FALSE(has(b.console, "left ")) << b.console;
}

TEST_F(InitBoot, SigtermToInitIsForwardedToTheWorkload) {
  // The signal goes to PID 1 only (from a child of the workload, since nothing outside the guest
  // can signal it under qemu); the workload's trap can only fire if the init relays it.
  auto b = run_sh(
      "trap 'echo got TERM; exit 0' TERM; (sleep 1; kill -TERM 1) & "
      "i=0; while [ $i -lt 60 ]; do sleep 1; i=$((i+1)); done; echo no signal; exit 9");
  EXPECT_EQ(b.status(), 0) << b.console;
  EXPECT_TRUE(has(b.console, "got TERM\n")) << b.console;
}

TEST_F(InitBoot, UntrappedSigtermEndsTheWorkloadWith143) {
  auto b = run_sh("(sleep 1; kill -TERM 1) & sleep 60; exit 9");
  EXPECT_EQ(b.qemu_exit, qemu_code_for(143)) << b.console;
}

TEST_F(InitBoot, StopRequestSendsTheImagesStopSignal) {
  RuntimeConfig c;
  c.stop_signal = "SIGUSR1";
  auto b = run_sh(
      "trap 'echo got USR1; exit 0' USR1; trap 'echo got PWR; exit 8' PWR; (sleep 1; kill -PWR 1) "
      "& "
      "i=0; while [ $i -lt 60 ]; do sleep 1; i=$((i+1)); done; exit 9",
      c);
  EXPECT_EQ(b.status(), 0) << b.console;
  EXPECT_TRUE(has(b.console, "got USR1\n")) << b.console;
}

TEST_F(InitBoot, GuestSetupLikeDocker) {
  RuntimeConfig c;
  c.hostname = "setupbox";
  auto b = run_sh(
      "hostname; cat /etc/hosts; cat /etc/hostname; cat /proc/mounts; ulimit -n; cat "
      "/sys/class/net/lo/flags; "
      "ls -l /dev/fd /dev/ptmx; [ -c /dev/null ] && echo null-ok; echo umask=$(umask)",
      c);
  EXPECT_EQ(b.status(), 0) << b.console;
  EXPECT_TRUE(has(b.console, "setupbox\n")) << b.console;
  EXPECT_TRUE(has(b.console, "127.0.0.1\tlocalhost\n")) << b.console;
  EXPECT_TRUE(has(b.console, "127.0.1.1\tsetupbox\n")) << b.console;
  EXPECT_TRUE(has(b.console, "devtmpfs /dev devtmpfs")) << b.console;
  EXPECT_TRUE(has(b.console, "proc /proc proc")) << b.console;
  EXPECT_TRUE(has(b.console, "sysfs /sys sysfs")) << b.console;
  EXPECT_TRUE(has(b.console, "devpts /dev/pts devpts")) << b.console;
  EXPECT_TRUE(has(b.console, "tmpfs /dev/shm tmpfs")) << b.console;
  EXPECT_FALSE(has(b.console, " /tmp tmpfs")) << b.console;  // docker leaves /tmp to the image
  EXPECT_TRUE(has(b.console, "1048576\n")) << b.console;
  EXPECT_TRUE(has(b.console, "0x9\n")) << b.console;  // lo: IFF_UP | IFF_LOOPBACK
  EXPECT_TRUE(has(b.console, "/dev/fd -> /proc/self/fd")) << b.console;
  EXPECT_TRUE(has(b.console, "/dev/ptmx -> pts/ptmx")) << b.console;
  EXPECT_TRUE(has(b.console, "null-ok\n")) << b.console;
  EXPECT_TRUE(has(b.console, "umask=0022\n")) << b.console;
}

TEST_F(InitBoot, ImageEtcFilesAreKept) {
  put(root_ / "etc/hosts", "10.1.2.3\tdb\n");
  put(root_ / "etc/resolv.conf", "");
  auto b = run_sh("cat /etc/hosts; echo ---; cat /etc/resolv.conf; echo ---");
  EXPECT_EQ(b.status(), 0) << b.console;
  EXPECT_TRUE(has(b.console, "10.1.2.3\tdb\n---\n# generated by img2vm-init\n---\n")) << b.console;
}

TEST_F(InitBoot, OverridesThroughTheKernelCommandLine) {
  RuntimeConfig c;
  c.entrypoint = {"/bin/false"};
  c.cmd = {"ignored"};
  c.env = {"KEEP=1", "X=old"};
  write_config(c);
  put(root_ / "opt/greet",
      "#!/bin/sh\necho \"greet $* X=$X KEEP=$KEEP user=$(id -u) cwd=$(pwd) "
      "host=$(hostname)\"\nexit 4\n",
      0755);
  RunOverrides o;
  o.entrypoint = Strings{"/opt/greet"};
  o.cmd = Strings{"a b", "c=d"};
  o.env = {"X=new value=1"};
  o.user = "1000";
  o.working_dir = "/work dir";
  o.hostname = "ovr";
  auto b = boot(guestabi::run_overrides_kernel_param(o));
  EXPECT_EQ(b.status(), 4) << b.console;
  EXPECT_TRUE(
      has(b.console, "greet a b c=d X=new value=1 KEEP=1 user=1000 cwd=/work dir host=ovr\n"))
      << b.console;
}

TEST_F(InitBoot, TrailingArgsOverrideCmdAndTtyMode) {
  RuntimeConfig c;
  c.entrypoint = {"sh", "-c"};
  c.cmd = {"exit 1"};
  write_config(c);
  RunOverrides o;
  o.cmd = Strings{"[ -t 0 ] && [ -t 1 ] && echo tty=yes TERM=$TERM; exit 6"};
  o.tty = true;
  auto b = boot(guestabi::run_overrides_kernel_param(o));
  EXPECT_EQ(b.status(), 6) << b.console;
  EXPECT_TRUE(has(b.console, "tty=yes TERM=xterm")) << b.console;
}

TEST_F(InitBoot, OverridesThroughABlockDevice) {
  RuntimeConfig c;
  c.cmd = {"sh", "-c", "exit 1"};
  write_config(c);
  RunOverrides o;
  std::string big(6000, 'v');  // far beyond the 2048-byte kernel command line
  o.env = {"BIG=" + big};
  o.cmd = Strings{"sh", "-c", "echo big=${#BIG}; exit 11"};
  fs::path disk = work_.path() / "overrides.img";
  put(disk, guestabi::encode_overrides_disk(o));
  auto b = boot("img2vm.run=blk:/dev/vdb", disk);
  EXPECT_EQ(b.status(), 11) << b.console;
  EXPECT_TRUE(has(b.console, "big=6000\n")) << b.console;
}

TEST_F(InitBoot, BadOverridesAreAnInitFailure) {
  RuntimeConfig c;
  c.cmd = {"sh", "-c", "echo should not run"};
  write_config(c);
  auto b = boot("img2vm.run=@@@");
  EXPECT_TRUE(
      has(b.console,
          "img2vm-init: run overrides: kernel parameter img2vm.run: base64url: invalid character"))
      << b.console;
  EXPECT_EQ(b.status(), 3) << b.console;
}

// Every run's entropy and clock (issue #19): taken in and set before the workload, no warning.
constexpr int64_t k2031 = 1'938'038'400'000'000'000;  // 2031-06-01T00:00:00Z

RunOverrides fresh_overrides(const std::string& script) {
  RunOverrides o;
  o.cmd = Strings{"sh", "-c", script};
  o.entropy = std::string(32, '\x5a');
  o.realtime_ns = k2031;
  return o;
}

TEST_F(InitBoot, ColdBootTakesTheRunsClockAndEntropy) {
  write_config({});
  auto b = boot(guestabi::run_overrides_kernel_param(fresh_overrides("date -u +%F; exit 12")));
  EXPECT_EQ(b.status(), 12) << b.console;
  EXPECT_TRUE(has(b.console, "2031-06-01\n")) << b.console;
  EXPECT_FALSE(has(b.console, "img2vm-init: warning")) << b.console;
}

// img2vm.snapshot=1: BOOT_MARK 4 (nothing listens under qemu, so the guest goes on as the saved
// VM does when resumed), then the overrides from the disk, read with O_DIRECT.
TEST_F(InitBoot, SnapshotModeTakesTheOverridesFromTheDisk) {
  write_config({});
  fs::path disk = work_.path() / "overrides.img";
  put(disk, guestabi::encode_overrides_disk(fresh_overrides(
                "date -u +%F; echo boot_id=$(cat /proc/sys/kernel/random/boot_id); exit 13")));
  auto b =
      boot(guestabi::snapshot_param() + " " + guestabi::run_overrides_disk_param("/dev/vdb"), disk);
  EXPECT_EQ(b.status(), 13) << b.console;
  EXPECT_TRUE(has(b.console, "2031-06-01\n")) << b.console;
  EXPECT_TRUE(has(b.console, "boot_id=")) << b.console;
  EXPECT_FALSE(has(b.console, "img2vm-init: warning")) << b.console;
}

// Before the snapshot point the init reads the image's own program (init/warm.hpp), so that a
// resumed VM's exec of it takes no page from its disk: the workload, the image's busybox sh,
// shows no major page fault of its own (/proc/PID/stat field 12). A cold boot, which reads
// nothing ahead, shows some: the measure can tell.
TEST_F(InitBoot, SnapshotModeReadsTheImagesProgramBeforeThePoint) {
  RuntimeConfig c;
  c.cmd = {"sh"};
  write_config(c);
  const std::string script =
      "read -r _ _ _ _ _ _ _ _ _ _ _ maj _ </proc/$$/stat; echo majflt=$maj; exit 14";
  fs::path disk = work_.path() / "overrides.img";
  put(disk, guestabi::encode_overrides_disk(fresh_overrides(script)));
  auto b =
      boot(guestabi::snapshot_param() + " " + guestabi::run_overrides_disk_param("/dev/vdb"), disk);
  EXPECT_EQ(b.status(), 14) << b.console;
  EXPECT_TRUE(has(b.console, "majflt=0\n")) << b.console;
  auto cold = boot(guestabi::run_overrides_kernel_param(fresh_overrides(script)));
  EXPECT_EQ(cold.status(), 14) << cold.console;
  EXPECT_TRUE(has(cold.console, "majflt=")) << cold.console;
  EXPECT_FALSE(has(cold.console, "majflt=0\n")) << cold.console;
}

// The image's major page faults (/proc/self/stat field 12) as `cat /proc/self/stat` printed
// them; -1 when the console has no such line.
long cat_majflt(const std::string& console) {
  const std::size_t at = console.find("(cat) ");
  if (at == std::string::npos) return -1;
  std::istringstream fields(console.substr(at + 6, console.find('\n', at) - at - 6));
  std::string f;
  for (int i = 0; i <= 9 && fields >> f; ++i)  // state, ppid, ..., minflt, cminflt, majflt
    if (i == 9) return std::stol(f);
  return -1;
}

// A dynamically linked program (the host's cat, with its loader and libc) takes no page from
// its disk in a resumed VM either: before the snapshot point the init reads the libraries it
// needs (DT_NEEDED, found where its loader looks) besides the program and its loader. A cold
// boot's cat faults them in from the disk.
TEST_F(InitBoot, SnapshotModeReadsTheProgramsSharedLibrariesBeforeThePoint) {
  const std::string libc = "/lib/x86_64-linux-gnu/libc.so.6";
  for (const std::string f : {"/usr/bin/cat", "/lib64/ld-linux-x86-64.so.2", libc.c_str()}) {
    fs::create_directories((root_ / f.substr(1)).parent_path());
    fs::copy_file(f, root_ / f.substr(1));  // the file a link names, as a regular file
  }
  RuntimeConfig c;
  c.cmd = {"/usr/bin/cat", "/proc/self/stat"};
  write_config(c);
  RunOverrides o = fresh_overrides("");
  o.cmd.reset();  // the image's own command
  fs::path disk = work_.path() / "overrides.img";
  put(disk, guestabi::encode_overrides_disk(o));
  auto b =
      boot(guestabi::snapshot_param() + " " + guestabi::run_overrides_disk_param("/dev/vdb"), disk);
  EXPECT_EQ(b.status(), 0) << b.console;
  EXPECT_EQ(cat_majflt(b.console), 0) << b.console;
  auto cold = boot(guestabi::run_overrides_kernel_param(o));
  EXPECT_EQ(cold.status(), 0) << cold.console;
  EXPECT_GT(cat_majflt(cold.console), 0) << cold.console;
}

TEST_F(InitBoot, InlineOverridesInSnapshotModeAreAnInitFailure) {
  write_config({});
  auto b = boot(guestabi::snapshot_param() + " " +
                guestabi::run_overrides_kernel_param(fresh_overrides("echo should not run")));
  EXPECT_TRUE(has(b.console,
                  "img2vm-init: run overrides: inline img2vm.run= in snapshot mode "
                  "(img2vm.snapshot=1): the command line is frozen in the snapshot"))
      << b.console;
  EXPECT_FALSE(has(b.console, "should not run")) << b.console;
  EXPECT_EQ(b.status(), 3) << b.console;
}

// The console line starting with `start`, without its end of line (the init's own lines end in
// \r\n: the console is still a cooked terminal then); empty when there is none.
std::string line_starting(const std::string& console, const std::string& start) {
  std::size_t at = console.find(start);
  if (at == std::string::npos) return {};
  std::string line = console.substr(at, console.find('\n', at) - at);
  if (line.ends_with('\r')) line.pop_back();
  return line;
}

std::string file_text(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

// MountSpec's fields: type, tag, target, readonly, size, mode.
constexpr auto kTmpfs = guestabi::MountSpec::Type::kTmpfs;
constexpr auto kVirtiofs = guestabi::MountSpec::Type::kVirtiofs;

// --tmpfs: mounted before the workload on created mount points, with size, mode and read-only
// as asked, nosuid and nodev but not noexec; -w may lie inside one.
TEST_F(InitBoot, TmpfsMountsFromTheOverrides) {
  RuntimeConfig c;
  c.cmd = {"sh", "-c", "exit 1"};
  write_config(c);
  RunOverrides o;
  o.mounts = {{kTmpfs, "", "/scratch/deep", false, 1 << 20, 0750}, {kTmpfs, "", "/ro", true, 0, 0}};
  o.working_dir = "/scratch/deep/work";
  o.cmd = Strings{
      "sh", "-c",
      "grep -E ' /scratch/deep | /ro ' /proc/mounts; "
      "stat -c '%n %a %u:%g' /scratch /scratch/deep /ro; pwd; "
      "[ \"$(stat -c %d .)\" = \"$(stat -c %d /scratch/deep)\" ] && echo workdir-in-tmpfs; "
      "printf '#!/bin/sh\\necho exec-ok\\n' > /scratch/deep/x && chmod 755 /scratch/deep/x && "
      "/scratch/deep/x; "
      "(echo no > /ro/f) 2>&1; exit 5"};
  auto b = boot(guestabi::run_overrides_kernel_param(o));
  EXPECT_EQ(b.status(), 5) << b.console;
  std::string scratch = line_starting(b.console, "tmpfs /scratch/deep tmpfs ");
  EXPECT_TRUE(scratch.starts_with("tmpfs /scratch/deep tmpfs rw,nosuid,nodev,")) << b.console;
  EXPECT_TRUE(has(scratch, ",size=1024k")) << b.console;
  EXPECT_TRUE(has(scratch, ",mode=750")) << b.console;
  EXPECT_FALSE(has(scratch, "noexec")) << b.console;
  std::string ro = line_starting(b.console, "tmpfs /ro tmpfs ");
  EXPECT_TRUE(ro.starts_with("tmpfs /ro tmpfs ro,nosuid,nodev,")) << b.console;
  EXPECT_FALSE(has(ro, "size=")) << b.console;  // the kernel's default size
  EXPECT_TRUE(has(b.console, "/scratch 755 0:0\n/scratch/deep 750 0:0\n/ro 1777 0:0\n"))
      << b.console;
  EXPECT_TRUE(has(b.console, "/scratch/deep/work\nworkdir-in-tmpfs\nexec-ok\n")) << b.console;
  EXPECT_TRUE(has(b.console, "can't create /ro/f: Read-only file system")) << b.console;
}

// A mount that cannot be made is an init failure (INIT_FAIL 4) naming it; the workload never runs.
TEST_F(InitBoot, FailedMountsAreInitFailures) {
  RuntimeConfig c;
  c.cmd = {"sh", "-c", "echo should not run"};
  write_config(c);
  RunOverrides o;
  o.mounts = {{kVirtiofs, "nosuch", "/data", false, 0, 0}};
  auto b = boot(guestabi::run_overrides_kernel_param(o));
  EXPECT_EQ(b.status(), 4) << b.console;
  // The old guest kernel has no virtio-fs at all; one with it has no device with this tag.
  std::string line = line_starting(b.console, "img2vm-init: mounting virtiofs 'nosuch' on /data: ");
  EXPECT_TRUE(line.ends_with(": No such device (the guest kernel has no virtio-fs)") ||
              line.ends_with(": Invalid argument (no virtio-fs device has this tag)"))
      << b.console;
  EXPECT_FALSE(has(b.console, "should not run")) << b.console;

  o.mounts = {{kTmpfs, "", "/etc/passwd/sub", false, 0, 0}};
  b = boot(guestabi::run_overrides_kernel_param(o));
  EXPECT_EQ(b.status(), 4) << b.console;
  EXPECT_TRUE(has(b.console,
                  "img2vm-init: mounting tmpfs on /etc/passwd/sub: /etc/passwd exists and is not "
                  "a directory"))
      << b.console;
  EXPECT_FALSE(has(b.console, "should not run")) << b.console;
}

// -v HOST:GUEST: a host directory shared through virtio-fs (qemu's vhost-user-fs device served
// by Debian's virtiofsd), read and written from inside the guest. Skipped with a guest kernel
// that has no virtio-fs, which the init's failure says.
TEST_F(InitBoot, VirtiofsShareFromTheHost) {
  const std::string virtiofsd = "/usr/lib/qemu/virtiofsd";
  if (::geteuid() != 0 || !fs::exists(virtiofsd))
    GTEST_SKIP() << "needs root and " << virtiofsd << " (qemu-system-common)";
  TempDir share("init-virtiofs");
  put(share.path() / "from-host.txt", "hello from the host\n");
  const fs::path sock = work_.path() / "virtiofsd.sock", log = work_.path() / "virtiofsd.log";
  img2vm::testing::ChildProcess daemon(
      {virtiofsd, "--socket-path=" + sock.string(), "-o", "source=" + share.path().string(), "-o",
       "sandbox=chroot", "-o", "cache=none"},
      log);
  // It logs this once it listens; it serves one connection, so the test must not probe it.
  auto listening = [&] { return has(file_text(log), "Waiting for vhost-user socket connection"); };
  for (int i = 0; i < 100 && !listening() && daemon.running(); ++i) ::usleep(100'000);
  ASSERT_TRUE(listening()) << "virtiofsd did not start; see " << log;

  machine_options_ = ",memory-backend=mem";
  extra_qemu_ = {"-object", "memory-backend-memfd,id=mem,size=256M,share=on", "-chardev",
                 "socket,id=c0,path=" + sock.string(), "-device",
                 "vhost-user-fs-device,chardev=c0,tag=share0",
                 // qemu's virtio-mmio is legacy (0.9) unless told otherwise, and virtiofsd's
                 // libvhost-user refuses legacy devices (it then drops the connection at
                 // set_mem_table and the guest's first access hangs).
                 "-global", "virtio-mmio.force-legacy=false"};
  RuntimeConfig c;
  c.cmd = {"sh", "-c",
           "grep ' /data ' /proc/mounts; cat /data/from-host.txt; "
           "echo 'written in the guest' > /data/from-guest.txt; exit 7"};
  write_config(c);
  RunOverrides o;
  o.mounts = {{kVirtiofs, "share0", "/data", false, 0, 0}};
  auto b = boot(guestabi::run_overrides_kernel_param(o));
  if (has(b.console, "(the guest kernel has no virtio-fs)"))
    GTEST_SKIP() << "the guest kernel " << *kernel_ << " has no virtio-fs";
  EXPECT_EQ(b.status(), 7) << b.console;
  EXPECT_TRUE(has(b.console, "share0 /data virtiofs rw,")) << b.console;
  EXPECT_TRUE(has(b.console, "hello from the host\n")) << b.console;
  EXPECT_EQ(file_text(share.path() / "from-guest.txt"), "written in the guest\n");
}

TEST_F(InitBoot, MissingConfigIsAnInitFailure) {
  auto b = boot();
  EXPECT_TRUE(has(b.console,
                  "img2vm-init: reading the runtime config: cannot open /.img2vm/config.json: No "
                  "such file or directory"))
      << b.console;
  EXPECT_EQ(b.status(), 2) << b.console;
}

}  // namespace

// The network overrides configure eth0 before the workload runs. qemu's user-mode network is
// the peer here (its gateway 10.0.2.2 forwards to the host's loopback), so an HTTP server the
// test runs on 127.0.0.1 is reachable from the guest only if address, netmask and link are right.
TEST_F(InitBoot, NetworkOverridesConfigureTheInterface) {
  TempDir www("init-net-www");
  put(www.path() / "hello.txt", "hello over the network\n");
  int port = img2vm::testing::free_loopback_port();
  ASSERT_GT(port, 0);
  img2vm::testing::ChildProcess server({"python3", "-m", "http.server", std::to_string(port),
                                        "--bind", "127.0.0.1", "--directory", www.path().string()},
                                       work_.path() / "http.log");
  for (int i = 0; i < 100 && !img2vm::testing::loopback_port_accepts(port); ++i) ::usleep(100'000);
  ASSERT_TRUE(img2vm::testing::loopback_port_accepts(port))
      << "the test's HTTP server did not start";

  extra_qemu_ = {"-netdev", "user,id=n0", "-device", "virtio-net-device,netdev=n0"};
  RuntimeConfig c;
  c.cmd = {"sh", "-c",
           "ip addr show eth0; ip route; cat /etc/hosts; wget -qO- http://10.0.2.2:" +
               std::to_string(port) + "/hello.txt; exit 4"};
  c.hostname = "netbox";
  write_config(c);
  RunOverrides o;
  o.net = guestabi::NetConfig{"eth0", "10.0.2.15", 24, "10.0.2.2", 1400, "52:54:00:ab:cd:0f"};
  auto b = boot(guestabi::run_overrides_kernel_param(o));
  EXPECT_EQ(b.status(), 4) << b.console;
  EXPECT_TRUE(has(b.console, "inet 10.0.2.15/24")) << b.console;
  EXPECT_TRUE(has(b.console, "mtu 1400")) << b.console;
  EXPECT_TRUE(has(b.console, "link/ether 52:54:00:ab:cd:0f")) << b.console;  // not qemu's
  EXPECT_TRUE(has(b.console, "default via 10.0.2.2 dev eth0")) << b.console;
  EXPECT_TRUE(has(b.console, "10.0.2.15\tnetbox")) << b.console;
  EXPECT_TRUE(has(b.console, "hello over the network")) << b.console;

  // Without a network device the same overrides are an init failure (code 10), named.
  extra_qemu_.clear();
  b = boot(guestabi::run_overrides_kernel_param(o));
  EXPECT_EQ(b.qemu_exit, qemu_code_for(10)) << b.console;
  EXPECT_TRUE(has(b.console, "img2vm-init: network: configuring eth0")) << b.console;
}

// A dual-stack engine network's interface (img2vm-oci): the IPv6 addresses and the other routes
// are set up too, on-link routes before those through a gateway. qemu's user-mode network
// answers pings at fec0::2 (its IPv6 host address) once the guest has fec0::15 and a route.
TEST_F(InitBoot, NetworkOverridesCarryIpv6AddressesAndRoutes) {
  extra_qemu_ = {"-netdev", "user,id=n0", "-device", "virtio-net-device,netdev=n0"};
  RuntimeConfig c;
  c.cmd = {"sh", "-c",
           "ip -6 addr show dev eth0; ip route; ip -6 route; "
           "ping -c 1 -W 20 fec0::2 >/dev/null && echo pinged-v6; exit 4"};
  write_config(c);
  RunOverrides o;
  o.net = guestabi::NetConfig{"eth0", "10.0.2.15", 24, "10.0.2.2", 0, ""};
  o.net->addresses6 = {{"fec0::15", 64}, {"fd00:5::15", 128}};
  o.net->routes = {{"192.168.77.0", 24, "10.9.9.9"},  // through an on-link route below
                   {"10.9.9.9", 32, ""},
                   {"fd00:77::", 48, "fec0::2"},
                   {"::", 0, "fec0::2"}};
  auto b = boot(guestabi::run_overrides_kernel_param(o));
  EXPECT_EQ(b.status(), 4) << b.console;
  EXPECT_TRUE(has(b.console, "inet6 fec0::15/64 scope site")) << b.console;
  EXPECT_TRUE(has(b.console, "inet6 fd00:5::15/128 scope global")) << b.console;
  EXPECT_TRUE(has(b.console, "192.168.77.0/24 via 10.9.9.9 dev eth0")) << b.console;
  EXPECT_TRUE(has(b.console, "10.9.9.9 dev eth0")) << b.console;
  EXPECT_TRUE(has(b.console, "fd00:77::/48 via fec0::2 dev eth0")) << b.console;
  EXPECT_TRUE(has(b.console, "default via fec0::2 dev eth0")) << b.console;
  EXPECT_TRUE(has(b.console, "pinged-v6")) << b.console;

  // A route the kernel refuses (its gateway on no link) is an init failure naming it.
  o.net->routes = {{"192.168.78.0", 24, "10.9.9.8"}};
  b = boot(guestabi::run_overrides_kernel_param(o));
  EXPECT_EQ(b.qemu_exit, qemu_code_for(10)) << b.console;
  EXPECT_TRUE(has(b.console, "adding the route to 192.168.78.0/24 via 10.9.9.8")) << b.console;
}
