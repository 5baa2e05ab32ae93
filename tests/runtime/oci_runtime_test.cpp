// A bundle's config.json made into a VM's options for img2vm-oci (issue #18): the process
// becomes the root's config, the workload waits for start, memory and vCPUs come from
// linux.resources or the annotations, the engine's /dev tmpfs gives way to the init's, a bind
// mount of a regular file is a copy for the guest init to place (bounded),
// the engine's network namespace is the VM's, a terminal is the guest's tty; the pty whose
// master goes to --console-socket; and the state's JSON.
#include "img2vm/runtime/oci_runtime.hpp"

#include <gtest/gtest.h>
#include <linux/magic.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

#include <cstring>
#include <nlohmann/json.hpp>

#include "img2vm/base/error.hpp"
#include "img2vm/base/fd.hpp"

namespace img2vm::runtime {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

class OciOptions : public ::testing::Test {
 protected:
  TempDir dir{"img2vm-oci-options"};
  std::vector<std::string> warnings;

  void SetUp() override {
    fs::create_directories(dir.path() / "rootfs");
    fs::create_directories(dir.path() / "share");
    write_file_atomic(dir.path() / "share/file", "x");
    write_file_atomic(dir.path() / "vmlinux", "not really a kernel");
  }
  json config() const {
    return {{"ociVersion", "1.0.2"},
            {"root", {{"path", "rootfs"}, {"readonly", true}}},
            {"hostname", "h1"},
            {"process",
             {{"user", {{"uid", 1000}, {"gid", 100}}},
              {"args", {"sh", "-c", "echo hi"}},
              {"env", {"PATH=/bin", "A=1"}},
              {"cwd", "/work"}}},
            {"mounts",
             {{{"destination", "/proc"}, {"type", "proc"}, {"source", "proc"}},
              {{"destination", "/dev"}, {"type", "tmpfs"}, {"source", "tmpfs"}},
              {{"destination", "/dev/shm"}, {"type", "tmpfs"}, {"source", "shm"}},
              {{"destination", "/data"},
               {"type", "bind"},
               {"source", (dir.path() / "share").string()},
               {"options", {"rbind", "ro"}}},
              {{"destination", "/etc/hosts"},
               {"type", "bind"},
               {"source", (dir.path() / "share/file").string()},
               {"options", {"rbind"}}},
              {{"destination", "/etc/motd"},
               {"type", "bind"},
               {"source", (dir.path() / "share/file").string()},
               {"options", {"rbind"}}}}},
            {"annotations", {{"org.img2vm.kernel", (dir.path() / "vmlinux").string()}}}};
  }
  MachineOptions options(const json& j) {
    OciBundle b = parse_oci_config(j.dump(), dir.path());
    return oci_machine_options(b, [this](const std::string& w) { warnings.push_back(w); });
  }
  bool warned(const std::string& part) const {
    for (const auto& w : warnings)
      if (w.find(part) != std::string::npos) return true;
    return false;
  }
};

TEST_F(OciOptions, TheProcessBecomesTheRootsConfigAndWaitsForStart) {
  MachineOptions mo = options(config());
  EXPECT_EQ(mo.kernel, dir.path() / "vmlinux");
  ASSERT_TRUE(mo.root_dir);
  EXPECT_EQ(mo.root_dir->path, fs::canonical(dir.path() / "rootfs"));
  EXPECT_TRUE(mo.root_dir->read_only);
  ASSERT_TRUE(mo.root_dir->config);
  const guestabi::RuntimeConfig& rc = *mo.root_dir->config;
  EXPECT_EQ(rc.cmd, (std::vector<std::string>{"sh", "-c", "echo hi"}));
  EXPECT_TRUE(rc.entrypoint.empty());
  EXPECT_EQ(rc.env, (std::vector<std::string>{"PATH=/bin", "A=1"}));
  EXPECT_EQ(rc.working_dir, "/work");
  EXPECT_EQ(rc.user, "1000:100");
  EXPECT_EQ(rc.hostname, "h1");
  EXPECT_TRUE(mo.overrides.wait_for_start);
  EXPECT_TRUE(mo.overrides.agent_signals);
  EXPECT_TRUE(mo.defer_shares);
  EXPECT_EQ(mo.network, NetworkMode::kNone);
  EXPECT_EQ(mo.memory_mib, kOciDefaultMemoryMib);
  EXPECT_EQ(mo.cpus, 1u);
}

TEST_F(OciOptions, MountsAVmCanGiveAndCopiesOfFiles) {
  json j = config();
  j["mounts"][5]["options"] = {"rbind", "ro"};
  ASSERT_EQ(::chmod((dir.path() / "share/file").c_str(), 0640), 0);
  MachineOptions mo = options(j);
  // /dev/shm and /data; not /dev; the files as copies, in config order.
  ASSERT_EQ(mo.mounts.size(), 4u);
  EXPECT_EQ(mo.mounts[0].target, "/dev/shm");
  EXPECT_EQ(mo.mounts[0].type, Mount::Type::kTmpfs);
  EXPECT_EQ(mo.mounts[1].target, "/data");
  EXPECT_EQ(mo.mounts[1].type, Mount::Type::kBind);
  EXPECT_TRUE(mo.mounts[1].read_only);
  for (size_t i : {2u, 3u}) {
    const Mount& f = mo.mounts[i];
    EXPECT_EQ(f.target, i == 2 ? "/etc/hosts" : "/etc/motd");
    EXPECT_EQ(f.type, Mount::Type::kFile);
    EXPECT_EQ(f.content, "x");
    EXPECT_EQ(f.mode, 0640u);
    EXPECT_EQ(f.uid, ::geteuid());
    EXPECT_EQ(f.gid, ::getegid());
    EXPECT_EQ(f.read_only, i == 3);
  }
  EXPECT_FALSE(warned("mounts")) << ::testing::PrintToString(warnings);
}

// The engine's namespace (podman's CNI or netavark, containerd's CNI) is the VM's network; a
// namespace of its own (no path) or none at all (the host's) leaves the VM loopback only.
TEST_F(OciOptions, TheEnginesNetworkNamespaceIsTheVms) {
  json j = config();
  j["linux"] = {
      {"namespaces", {{{"type", "pid"}}, {{"type", "network"}, {"path", "/run/netns/cni-1"}}}}};
  MachineOptions mo = options(j);
  EXPECT_EQ(mo.network, NetworkMode::kNetns);
  EXPECT_EQ(mo.netns, "/run/netns/cni-1");
  EXPECT_FALSE(warned("network")) << ::testing::PrintToString(warnings);

  j["linux"]["namespaces"][1].erase("path");
  mo = options(j);
  EXPECT_EQ(mo.network, NetworkMode::kNone);
  EXPECT_TRUE(mo.netns.empty());
  EXPECT_FALSE(warned("network")) << ::testing::PrintToString(warnings);

  j["linux"]["namespaces"].erase(1);
  mo = options(j);
  EXPECT_EQ(mo.network, NetworkMode::kNone);
  EXPECT_TRUE(warned("no network namespace (the host's network)"))
      << ::testing::PrintToString(warnings);
}

// The engine's network files (podman's /etc/hosts names the container and
// host.containers.internal) reach the guest as they are, owner and mode kept; the init then
// generates none of its own (no nameservers are picked out for it).
TEST_F(OciOptions, TheEnginesNetworkFilesAreCopiedAsTheyAre) {
  json j = config();
  j["mounts"].erase(5);
  j["mounts"].erase(4);
  const std::string resolv_text =
      "search dns.podman\nnameserver 10.88.0.1\nnameserver fd00::1\noptions ndots:5\n";
  const std::string hosts_text =
      "127.0.0.1\tlocalhost\n10.88.0.7\tweb c0ffee\n"
      "10.88.0.1\thost.containers.internal\n";
  std::vector<std::pair<std::string, std::string>> files = {{"/etc/resolv.conf", resolv_text},
                                                            {"/etc/hosts", hosts_text},
                                                            {"/etc/hostname", "web\n"},
                                                            {"/run/.containerenv", ""}};
  for (const auto& [target, text] : files) {
    const fs::path src = dir.path() / ("engine" + fs::path(target).filename().string());
    write_file_atomic(src, text);
    ASSERT_EQ(::chmod(src.c_str(), 0644), 0);
    if (::geteuid() == 0) {
      ASSERT_EQ(::chown(src.c_str(), 0, 0), 0);
    }
    j["mounts"].push_back({{"destination", target},
                           {"type", "bind"},
                           {"source", src.string()},
                           {"options", {"rbind", "nosuid"}}});
  }
  MachineOptions mo = options(j);
  EXPECT_TRUE(mo.overrides.dns.empty());
  ASSERT_EQ(mo.mounts.size(), 2u + files.size());
  for (size_t i = 0; i < files.size(); ++i) {
    const Mount& f = mo.mounts[2 + i];
    EXPECT_EQ(f.type, Mount::Type::kFile) << f.target;
    EXPECT_EQ(f.target, files[i].first);
    EXPECT_EQ(f.content, files[i].second) << f.target;
    EXPECT_EQ(f.mode, 0644u);
    EXPECT_FALSE(f.read_only);
  }
  EXPECT_FALSE(warned("mounts")) << ::testing::PrintToString(warnings);
  // They reach the guest init's overrides as file mounts.
  mo.init = dir.path() / "vmlinux";  // any file: what the initramfs holds is not looked at here
  PreparedMachine pm = build_machine(std::move(mo));
  size_t seen = 0;
  for (const auto& m : pm.overrides.mounts)
    if (m.type == guestabi::MountSpec::Type::kFile) {
      EXPECT_EQ(m.content, files[seen].second);
      ++seen;
    }
  EXPECT_EQ(seen, files.size());
}

// The sources are untrusted: a file past 1 MiB, or files adding up past 4 MiB, are errors naming
// the mount; a FIFO (never opened: it would block), a device or a missing source is left out
// with a warning; a symlink is followed, as mount(2) follows it.
TEST_F(OciOptions, FileBindsAreBoundedAndOnlyRegularFilesAreRead) {
  auto with = [&](const std::vector<std::pair<std::string, fs::path>>& binds) {
    json j = config();
    j["mounts"].erase(5);
    j["mounts"].erase(4);
    for (const auto& [target, src] : binds)
      j["mounts"].push_back({{"destination", target}, {"type", "bind"}, {"source", src.string()}});
    warnings.clear();
    return j;
  };
  auto error_of = [&](const json& j) -> std::string {
    try {
      options(j);
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::kLimit) << e.what();
      return e.what();
    }
    return "(no error)";
  };
  const fs::path mib = dir.path() / "mib", over = dir.path() / "over";
  write_file_atomic(mib, std::string(guestabi::kMaxFileMountBytes, 'm'));
  write_file_atomic(over, std::string(guestabi::kMaxFileMountBytes + 1, 'o'));
  EXPECT_EQ(error_of(with({{"/etc/big", over}})),
            "config.json: mounts: /etc/big: " + over.string() +
                ": larger than 1024 KiB, the most a bind-mounted file may hold (it is copied into "
                "the VM)");
  std::vector<std::pair<std::string, fs::path>> four;
  for (int i = 0; i < 4; ++i) four.push_back({"/m" + std::to_string(i), mib});
  EXPECT_EQ(options(with(four)).mounts.size(), 2u + 4u);
  four.push_back({"/one-more", dir.path() / "share/file"});
  EXPECT_EQ(error_of(with(four)),
            "config.json: mounts: /one-more: " + (dir.path() / "share/file").string() +
                ": the bind-mounted files add up to more than 4 MiB, the most a VM takes (they "
                "are copied into it)");

  const fs::path fifo = dir.path() / "fifo";
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  const fs::path link = dir.path() / "link";
  fs::create_symlink(dir.path() / "share/file", link);
  MachineOptions mo = options(with({{"/etc/fifo", fifo},
                                    {"/etc/zero", "/dev/zero"},
                                    {"/etc/gone", dir.path() / "missing"},
                                    {"/etc/link", link}}));
  ASSERT_EQ(mo.mounts.size(), 3u);
  EXPECT_EQ(mo.mounts[2].target, "/etc/link");
  EXPECT_EQ(mo.mounts[2].content, "x");
  EXPECT_TRUE(warned("mounts: /etc/fifo: " + fifo.string() +
                     " is not a directory or a regular "
                     "file (a FIFO, device or socket cannot be shared with a VM); not mounted"))
      << ::testing::PrintToString(warnings);
  EXPECT_TRUE(warned("mounts: /etc/zero: /dev/zero is not a directory or a regular file"));
  EXPECT_TRUE(warned("mounts: /etc/gone: " + (dir.path() / "missing").string() +
                     " does not exist; not mounted"));
}

// podman binds a tmpfs of its own at /dev/shm (userdata/shm): the guest gets a tmpfs of that
// size instead of a virtio-fs share (and its virtiofsd) of it.
TEST_F(OciOptions, PodmansShmBindIsATmpfsOfTheGuest) {
  json j = config();
  j["mounts"][2] = {{"destination", "/dev/shm"},
                    {"type", "bind"},
                    {"source", (dir.path() / "share").string()},
                    {"options", {"rbind", "nosuid", "noexec", "nodev"}}};
  MachineOptions mo = options(j);
  ASSERT_EQ(mo.mounts.size(), 4u);  // and /data, and the copies of the two files
  EXPECT_EQ(mo.mounts[0].target, "/dev/shm");
  EXPECT_EQ(mo.mounts[0].type, Mount::Type::kTmpfs);
  EXPECT_TRUE(mo.mounts[0].source.empty());
  EXPECT_EQ(mo.mounts[0].size, 0u);  // not a tmpfs on the host: the guest kernel's default
  struct statfs st {};
  if (::statfs("/dev/shm", &st) == 0 && st.f_type == TMPFS_MAGIC) {
    j["mounts"][2]["source"] = "/dev/shm";
    mo = options(j);
    ASSERT_EQ(mo.mounts[0].type, Mount::Type::kTmpfs);
    EXPECT_EQ(mo.mounts[0].size, uint64_t(st.f_blocks) * uint64_t(st.f_bsize));
  }
}

TEST_F(OciOptions, MemoryAndCpusFromResourcesAndAnnotations) {
  json j = config();
  j["linux"] = {{"resources",
                 {{"memory", {{"limit", 300 * 1024 * 1024 + 1}}},
                  {"cpu", {{"quota", 150000}, {"period", 100000}}}}},
                {"namespaces", {{{"type", "network"}, {"path", "/proc/1/ns/net"}}}}};
  MachineOptions mo = options(j);
  EXPECT_EQ(mo.memory_mib, 301u);  // rounded up
  EXPECT_EQ(mo.cpus, 2u);
  EXPECT_EQ(mo.network, NetworkMode::kNetns);

  j["linux"]["resources"]["memory"]["limit"] = 1024 * 1024;
  mo = options(j);
  EXPECT_EQ(mo.memory_mib, kOciMinMemoryMib);
  EXPECT_TRUE(warned("below a VM's least"));

  j["annotations"]["org.img2vm.memory_mib"] = "512";
  j["annotations"]["org.img2vm.cpus"] = "3";
  mo = options(j);
  EXPECT_EQ(mo.memory_mib, 512u);
  EXPECT_EQ(mo.cpus, 3u);

  for (const char* bad : {"0", "x", "65", "-1", "3 "}) {
    j["annotations"]["org.img2vm.cpus"] = bad;
    try {
      options(j);
      ADD_FAILURE() << "cpus " << bad << " accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("org.img2vm.cpus"), std::string::npos) << e.what();
    }
  }
}

// process.terminal: the workload gets the console as its tty and its stdin (create's pty).
TEST_F(OciOptions, ATerminalIsTheConsoleAsTheWorkloadsTty) {
  EXPECT_FALSE(options(config()).overrides.tty);
  EXPECT_FALSE(options(config()).overrides.interactive);
  json j = config();
  j["process"]["terminal"] = true;
  MachineOptions mo = options(j);
  EXPECT_TRUE(mo.overrides.tty);
  EXPECT_TRUE(mo.overrides.interactive);
}

// --console-socket as runc serves it: one message on the engine's socket, the pty's name as its
// data and its master as the descriptor; the slave is raw (the guest's tty does the echo).
TEST(OciConsole, TheMasterOfARawPtyGoesToTheConsoleSocket) {
  TempDir dir{"img2vm-oci-console"};
  const fs::path path = dir.path() / "console.sock";
  UniqueFd listener(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  ASSERT_TRUE(listener);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, path.c_str(), sizeof addr.sun_path - 1);
  ASSERT_EQ(::bind(listener.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  ASSERT_EQ(::listen(listener.get(), 1), 0);

  ConsolePty pty = open_console_pty();
  send_console_master(path, pty);
  UniqueFd conn(::accept4(listener.get(), nullptr, nullptr, SOCK_CLOEXEC));
  ASSERT_TRUE(conn);
  char data[256] = {};
  iovec iov{data, sizeof data - 1};
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))] = {};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof control;
  ssize_t n = ::recvmsg(conn.get(), &msg, MSG_CMSG_CLOEXEC);
  ASSERT_GT(n, 0);
  cmsghdr* c = CMSG_FIRSTHDR(&msg);
  ASSERT_NE(c, nullptr);
  ASSERT_EQ(c->cmsg_type, SCM_RIGHTS);
  int fd = -1;
  std::memcpy(&fd, CMSG_DATA(c), sizeof fd);
  UniqueFd master(fd);
  EXPECT_EQ(std::string(data, size_t(n)), pty.name);
  EXPECT_EQ(pty.name.rfind("/dev/pts/", 0), 0u) << pty.name;
  // A pty master: it names its slave, which is the pty's.
  ASSERT_TRUE(::isatty(master.get()));
  char name[128];
  ASSERT_EQ(::ptsname_r(master.get(), name, sizeof name), 0);
  EXPECT_EQ(std::string(name), pty.name);
  // What goes in at the master comes out of the slave as it is, and not echoed back.
  pty.master.reset();
  ASSERT_EQ(::write(master.get(), "ab\n", 3), 3);
  char got[8] = {};
  ASSERT_EQ(::read(pty.slave.get(), got, sizeof got), 3);
  EXPECT_EQ(std::string(got, 3), "ab\n");
  termios t{};
  ASSERT_EQ(::tcgetattr(pty.slave.get(), &t), 0);
  EXPECT_EQ(t.c_lflag & (ECHO | ICANON), 0u);
  // A size the engine sets on the master is the slave's.
  winsize ws{};
  ws.ws_row = 33;
  ws.ws_col = 101;
  ASSERT_EQ(::ioctl(master.get(), TIOCSWINSZ, &ws), 0);
  winsize seen{};
  ASSERT_EQ(::ioctl(pty.slave.get(), TIOCGWINSZ, &seen), 0);
  EXPECT_EQ(seen.ws_row, 33);
  EXPECT_EQ(seen.ws_col, 101);
}

TEST(OciConsole, ANoSocketIsAnErrorNamingIt) {
  ConsolePty pty = open_console_pty();
  try {
    send_console_master("/nonexistent/console.sock", pty);
    ADD_FAILURE() << "sent";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("--console-socket /nonexistent/console.sock"),
              std::string::npos)
        << e.what();
  }
}

TEST_F(OciOptions, AMissingKernelIsRefusedClearly) {
  json j = config();
  j["annotations"]["org.img2vm.kernel"] = (dir.path() / "nosuch").string();
  try {
    options(j);
    ADD_FAILURE() << "a missing kernel accepted";
  } catch (const Error& e) {
    // Named as the annotation it came from (podman shows this line as its error).
    EXPECT_EQ(e.kind(), ErrorKind::kNotFound);
    EXPECT_EQ(std::string(e.what()),
              "config.json: annotation org.img2vm.kernel: the kernel image " +
                  (dir.path() / "nosuch").string() + " does not exist");
  }
}

// IMG2VM_KERNEL set (or unset) for a test, as it was afterwards.
class KernelEnv {
 public:
  explicit KernelEnv(const std::optional<std::string>& value) {
    if (const char* e = std::getenv("IMG2VM_KERNEL")) saved_ = e;
    set(value);
  }
  ~KernelEnv() { set(saved_); }
  static void set(const std::optional<std::string>& v) {
    if (v)
      ::setenv("IMG2VM_KERNEL", v->c_str(), 1);
    else
      ::unsetenv("IMG2VM_KERNEL");
  }

 private:
  std::optional<std::string> saved_;
};

std::string message_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kNotFound) << e.what();
    return e.what();
  }
  return "(no error)";
}

// The kernel: the annotation's, else img2vm-oci's --kernel (podman --runtime-flag kernel=P, which
// reaches the infra container's create too), else IMG2VM_KERNEL (which conmon does not pass on);
// a missing file is refused naming where it was named, even when a later source has one.
TEST_F(OciOptions, TheKernelIsTheAnnotationsThenTheFlagsThenTheEnvironments) {
  const fs::path annotated = dir.path() / "vmlinux", flag = dir.path() / "flag-vmlinux",
                 env = dir.path() / "env-vmlinux", none = dir.path() / "nosuch";
  write_file_atomic(flag, "x");
  write_file_atomic(env, "x");
  KernelEnv e(env.string());
  json j = config();
  OciBundle b = parse_oci_config(j.dump(), dir.path());
  GuestKernel k = oci_guest_kernel(b, flag);
  EXPECT_EQ(k.path, annotated);
  EXPECT_EQ(k.source, "annotation");
  j["annotations"].erase("org.img2vm.kernel");
  b = parse_oci_config(j.dump(), dir.path());
  k = oci_guest_kernel(b, flag);
  EXPECT_EQ(k.path, flag);
  EXPECT_EQ(k.source, "--kernel");
  EXPECT_EQ(oci_machine_options(b, {}, flag).kernel, flag);
  k = oci_guest_kernel(b, {});
  EXPECT_EQ(k.path, env);
  EXPECT_EQ(k.source, "IMG2VM_KERNEL");
  EXPECT_EQ(oci_machine_options(b, {}).kernel, env);

  EXPECT_EQ(message_of([&] { oci_guest_kernel(b, none); }),
            "img2vm-oci --kernel: the kernel image " + none.string() + " does not exist");
  KernelEnv::set(none.string());
  EXPECT_EQ(message_of([&] { oci_guest_kernel(b, {}); }),
            "IMG2VM_KERNEL: the kernel image " + none.string() + " does not exist");
  EXPECT_EQ(oci_guest_kernel(b, flag).path, flag);
  j["annotations"]["org.img2vm.kernel"] = none.string();
  b = parse_oci_config(j.dump(), dir.path());
  EXPECT_EQ(message_of([&] { oci_guest_kernel(b, flag); }),
            "config.json: annotation org.img2vm.kernel: the kernel image " + none.string() +
                " does not exist");
}

// A pod's sandbox: containerd's and CRI-O's annotations say so (or say it is not), and podman's
// infra container, which has neither, runs its pause image's `/catatonit -P` (or Kubernetes'
// `/pause`); catatonit as an init (podman run --init) or anything else is a container.
TEST_F(OciOptions, APodsSandboxIsKnownByTheCriAnnotationsOrItsPauseProgram) {
  auto sandbox = [&](const std::vector<std::string>& args,
                     const std::map<std::string, std::string>& annotations) {
    json j = config();
    j["process"]["args"] = args;
    j["annotations"] = annotations;
    return is_pod_sandbox(parse_oci_config(j.dump(), dir.path()));
  };
  EXPECT_TRUE(sandbox({"/catatonit", "-P"}, {}));
  EXPECT_TRUE(sandbox({"/pause"}, {}));
  EXPECT_TRUE(sandbox({"/usr/bin/pause"}, {{"io.kubernetes.cri-o.ContainerType", "sandbox"}}));
  EXPECT_TRUE(sandbox({"/anything"}, {{"io.kubernetes.cri.container-type", "sandbox"}}));
  EXPECT_TRUE(sandbox({"/anything"}, {{"io.kubernetes.cri-o.ContainerType", "sandbox"}}));
  EXPECT_FALSE(sandbox({"/catatonit", "-P"}, {{"io.kubernetes.cri-o.ContainerType", "container"}}));
  EXPECT_FALSE(sandbox({"/pause"}, {{"io.kubernetes.cri.container-type", "container"}}));
  EXPECT_FALSE(sandbox({"/run/podman-init", "--", "sh"}, {}));
  EXPECT_FALSE(sandbox({"/catatonit", "--", "sh"}, {}));
  EXPECT_FALSE(sandbox({"/pause", "1"}, {}));
  EXPECT_FALSE(sandbox({"sh", "-c", "sleep 1"}, {}));
  EXPECT_FALSE(sandbox({"httpd", "-f"}, {{"io.kubernetes.cri-o.SandboxID", "abc"}}));
}

// A pod on the host's network gives its other containers its sandbox's namespace, the host's:
// no VM takes its interface.
TEST_F(OciOptions, TheHostsNetworkNamespaceIsNeverAVms) {
  json j = config();
  j["linux"]["namespaces"] = {{{"type", "network"}, {"path", "/proc/self/ns/net"}}};
  MachineOptions mo = options(j);
  EXPECT_EQ(mo.network, NetworkMode::kNone);
  EXPECT_TRUE(mo.netns.empty());
  EXPECT_TRUE(warned("/proc/self/ns/net is the host's network namespace"))
      << ::testing::PrintToString(warnings);
}

TEST_F(OciOptions, GroupsLimitsAndNoNewPrivilegesReachTheGuest) {
  json j = config();
  j["process"]["user"]["additionalGids"] = {10, 20};
  j["process"]["rlimits"] = {{{"type", "RLIMIT_NOFILE"}, {"soft", 1000}, {"hard", 2000}},
                             {{"type", "RLIMIT_BOGUS"}, {"soft", 1}, {"hard", 1}}};
  j["process"]["noNewPrivileges"] = true;
  MachineOptions mo = options(j);
  EXPECT_EQ(mo.overrides.extra_groups, (std::vector<uint32_t>{10, 20}));
  ASSERT_EQ(mo.overrides.rlimits.size(), 1u);
  EXPECT_EQ(mo.overrides.rlimits[0], (guestabi::Rlimit{"RLIMIT_NOFILE", 1000, 2000}));
  EXPECT_TRUE(warned("RLIMIT_BOGUS")) << ::testing::PrintToString(warnings);
  EXPECT_TRUE(mo.overrides.no_new_privileges);

  j["process"]["rlimits"] = {{{"type", "RLIMIT_NOFILE"}, {"soft", 1}, {"hard", 2}},
                             {{"type", "RLIMIT_NOFILE"}, {"soft", 1}, {"hard", 2}}};
  EXPECT_THROW(options(j), Error);
  j["process"].erase("rlimits");
  json gids = json::array();
  for (int i = 0; i <= 1024; ++i) gids.push_back(i);
  j["process"]["user"]["additionalGids"] = gids;
  EXPECT_THROW(options(j), Error);
}

TEST(OciState, IsTheRuntimeSpecsJson) {
  OciState s;
  s.id = "c1";
  s.status = "created";
  s.pid = 42;
  s.bundle = "/b";
  s.annotations = {{"a", "b"}};
  json j = json::parse(to_json(s));
  EXPECT_EQ(j["ociVersion"], kOciRuntimeSpecVersion);
  EXPECT_EQ(j["id"], "c1");
  EXPECT_EQ(j["status"], "created");
  EXPECT_EQ(j["pid"], 42);
  EXPECT_EQ(j["bundle"], "/b");
  EXPECT_EQ(j["annotations"]["a"], "b");
  json f = json::parse(oci_features_json());
  EXPECT_EQ(f["ociVersionMax"], kOciRuntimeSpecVersion);
  EXPECT_TRUE(f["linux"]["namespaces"].is_array());
}

// A record named c1 in the runtime's store, as create makes it before the VM starts.
VmRecord record_c1(OciRuntime& rt) {
  VmCreate c;
  c.name = "c1";
  c.bundle = "/b";
  return rt.store().create(c, "{}");
}

// The VM's end is recorded before its monitor (the --pid-file process) has gone: the container
// is stopped only once the monitor has (runtime-spec: its process has exited), so an engine
// that hears "stopped" finds the exit status its conmon or shim writes on reaping the monitor.
TEST(OciRuntimeStore, StoppedOnlyOnceTheMonitorHasEnded) {
  TempDir dir("img2vm-oci-store");
  OciRuntime rt(dir.path() / "state");
  const VmRecord r = record_c1(rt);
  auto ended_with_monitor = [&](ProcessRef monitor, bool started) {
    rt.store().update(r.id, [&](VmRecord& s) {
      s.status = VmStatus::kExited;
      s.exit_code = 3;
      s.monitor = monitor;
      s.started = started ? now_rfc3339_nano() : "";
    });
  };
  const ProcessRef alive = ProcessRef::of(::getpid());  // this process stands for the monitor
  ended_with_monitor(alive, true);
  OciState s = rt.state("c1");
  EXPECT_EQ(s.status, "running");
  EXPECT_EQ(s.pid, ::getpid());
  EXPECT_THROW(rt.remove("c1", false), Error);  // not stopped yet
  try {
    rt.kill("c1", 15);  // the VM has gone: nothing to signal
    ADD_FAILURE() << "kill of an ended VM";
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()), "container not running");
  }
  ended_with_monitor(alive, false);
  EXPECT_EQ(rt.state("c1").status, "created");
  ProcessRef gone = alive;
  gone.start_time += 1;  // the same pid, another process: the monitor has ended
  ended_with_monitor(gone, true);
  s = rt.state("c1");
  EXPECT_EQ(s.status, "stopped");
  EXPECT_EQ(s.pid, 0);
  rt.remove("c1", false);
  EXPECT_THROW(rt.state("c1"), Error);
}

// What start and exec say for a container in the wrong state (podman shows these lines): no
// exec before start or after the end, no second start, no start of a stopped one, no terminal
// without a console socket.
TEST(OciRuntimeStore, StartAndExecAreRefusedInTheWrongStateWithTheReason) {
  TempDir dir("img2vm-oci-store");
  OciRuntime rt(dir.path() / "state");
  const VmRecord r = record_c1(rt);
  auto set = [&](VmStatus status, bool started, ProcessRef monitor) {
    rt.store().update(r.id, [&](VmRecord& s) {
      s.status = status;
      s.started = started ? now_rfc3339_nano() : "";
      s.monitor = monitor;
    });
  };
  auto message = [](auto&& f) {
    try {
      f();
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("(no error)");
  };
  OciExecOptions e;
  e.id = "c1";
  e.process.args = {"true"};
  e.process.cwd = "/";
  const ProcessRef alive = ProcessRef::of(::getpid());
  ProcessRef gone = alive;
  gone.start_time += 1;

  set(VmStatus::kCreated, false, alive);
  EXPECT_EQ(message([&] { rt.exec(e); }), "cannot exec in a container that is creating");
  EXPECT_EQ(message([&] { rt.start("c1"); }), "cannot start a container that is creating");
  set(VmStatus::kRunning, false, alive);
  EXPECT_EQ(message([&] { rt.exec(e); }), "cannot exec in a container that is created");
  set(VmStatus::kRunning, true, alive);
  EXPECT_EQ(message([&] { rt.start("c1"); }), "cannot start an already running container");
  e.process.terminal = true;
  EXPECT_EQ(message([&] { rt.exec(e); }),
            "process.terminal: a terminal needs --console-socket (where its master goes)");
  e.process.terminal = false;
  set(VmStatus::kExited, true, gone);
  EXPECT_EQ(message([&] { rt.exec(e); }), "cannot exec in a container that is stopped");
  EXPECT_EQ(message([&] { rt.start("c1"); }), "cannot start a container that has stopped");
}

// This process as conmon and the shim are: the subreaper that a container's process is
// reparented to, for the test's time.
struct Subreaper {
  Subreaper() { ::prctl(PR_SET_CHILD_SUBREAPER, 1); }
  ~Subreaper() { ::prctl(PR_SET_CHILD_SUBREAPER, 0); }
};

std::string proc_field(pid_t pid, const std::string& file, const std::string& key = "") {
  std::string text;
  try {
    text = read_file("/proc/" + std::to_string(pid) + "/" + file, 1 << 16);
  } catch (const Error&) {
    return "(gone)";
  }
  if (key.empty()) return text;
  auto at = text.find("\n" + key + ":\t");
  if (at == std::string::npos) return "";
  at += key.size() + 3;
  return text.substr(at, text.find('\n', at) - at);
}

// The pod's sandbox (podman's infra container, `/catatonit -P`) without a kernel: no VM, a host
// process whose pid goes to --pid-file, a child of the subreaper (conmon's place), in a session
// of its own, with /dev/null for its stdio and nothing else open; created, then running; TERM
// ends it with that signal's status; then it is stopped, its kill refused, its delete leaves
// nothing. A second one is deleted with --force while it runs (only then); exec is refused.
TEST(OciPodSandbox, IsAHostProcessThatTheEngineWaitsForAndKills) {
  TempDir dir("img2vm-oci-sandbox");
  fs::create_directories(dir.path() / "bundle/rootfs");
  json cfg = {{"ociVersion", "1.0.2"},
              {"root", {{"path", "rootfs"}}},
              {"process", {{"args", {"/catatonit", "-P"}}, {"cwd", "/"}}}};
  write_file_atomic(dir.path() / "bundle/config.json", cfg.dump());
  KernelEnv no_kernel((dir.path() / "no-such-kernel").string());
  Subreaper reaper;
  OciRuntime rt(dir.path() / "state");
  std::vector<std::string> warnings;
  OciCreateOptions o;
  o.id = "infra";
  o.bundle = dir.path() / "bundle";
  o.pid_file = dir.path() / "pid";
  o.kernel = dir.path() / "no-such-kernel-either";
  o.warn = [&](const std::string& w) { warnings.push_back(w); };
  OciState s = rt.create(o);
  const pid_t pid = std::stoi(read_file(o.pid_file, 64));
  EXPECT_EQ(s.status, "created");
  EXPECT_EQ(s.pid, pid);
  EXPECT_EQ(proc_field(pid, "comm"), "img2vm-sandbox\n");
  EXPECT_EQ(proc_field(pid, "status", "PPid"), std::to_string(::getpid()));
  EXPECT_NE(::getsid(pid), ::getsid(0));
  std::error_code ec;
  size_t fds = 0;
  for (auto it = fs::directory_iterator("/proc/" + std::to_string(pid) + "/fd", ec);
       !ec && it != fs::directory_iterator(); it.increment(ec))
    ++fds;
  EXPECT_EQ(fds, 3u);
  EXPECT_EQ(fs::read_symlink("/proc/" + std::to_string(pid) + "/fd/1", ec), "/dev/null");
  ASSERT_EQ(warnings.size(), 1u);
  EXPECT_NE(warnings[0].find("a pod's sandbox (/catatonit): no VM"), std::string::npos)
      << warnings[0];
  EXPECT_EQ(rt.pids("infra"), std::vector<pid_t>{pid});

  rt.start("infra");
  EXPECT_EQ(rt.state("infra").status, "running");
  OciExecOptions e;
  e.id = "infra";
  e.process.args = {"true"};
  EXPECT_THROW(rt.exec(e), Error);
  rt.kill("infra", SIGTERM);
  int st = 0;
  ASSERT_EQ(::waitpid(pid, &st, 0), pid);
  EXPECT_TRUE(WIFSIGNALED(st) && WTERMSIG(st) == SIGTERM) << st;
  s = rt.state("infra");
  EXPECT_EQ(s.status, "stopped");
  EXPECT_EQ(s.pid, 0);
  EXPECT_THROW(rt.kill("infra", SIGKILL), Error);
  rt.remove("infra", false);
  EXPECT_THROW(rt.state("infra"), Error);

  o.id = "infra2";
  s = rt.create(o);
  rt.start("infra2");
  EXPECT_THROW(rt.remove("infra2", false), Error);  // running
  rt.remove("infra2", true);
  ASSERT_EQ(::waitpid(s.pid, &st, 0), s.pid);
  EXPECT_TRUE(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL) << st;
  EXPECT_TRUE(rt.list().empty());
}

TEST(OciRuntimeStore, UnknownIdsAndBadIdsAreErrors) {
  TempDir dir("img2vm-oci-store");
  OciRuntime rt(dir.path() / "state");
  try {
    rt.state("nosuch");
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kNotFound);
    EXPECT_EQ(std::string(e.what()), "container nosuch does not exist");
  }
  EXPECT_THROW(rt.start("nosuch"), Error);
  EXPECT_THROW(rt.kill("nosuch", 15), Error);
  EXPECT_THROW(rt.remove("nosuch", false), Error);
  OciCreateOptions o;
  o.id = "../x";
  o.bundle = dir.path();
  try {
    rt.create(o);
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("invalid container id"), std::string::npos) << e.what();
  }
  EXPECT_TRUE(rt.list().empty());
}

}  // namespace
}  // namespace img2vm::runtime
