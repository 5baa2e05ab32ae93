// The img2vm binary as a user meets it: --version, --help, `info`, and commands that are not
// built yet failing loudly (exit 2, one line) rather than pretending to succeed.
#include <gtest/gtest.h>

#include <cstdlib>
#include <nlohmann/json.hpp>

#include "img2vm/base/fd.hpp"
#include "process.hpp"

using namespace img2vm::testing;

namespace {

std::string bin() {
  const char* b = std::getenv("IMG2VM_BIN");
  return b ? b : "img2vm";
}

CommandResult img2vm(std::vector<std::string> args, std::map<std::string, std::string> env = {}) {
  args.insert(args.begin(), bin());
  RunOptions o;
  o.env = std::move(env);
  return run_command(args, o);
}

TEST(Cli, Version) {
  auto r = img2vm({"--version"});
  EXPECT_EQ(r.exit_code, 0) << r.describe();
  EXPECT_EQ(r.out.rfind("img2vm ", 0), 0u) << r.out;
  EXPECT_NE(r.out.find('.'), std::string::npos);
}

TEST(Cli, HelpListsEveryCommand) {
  auto r = img2vm({"--help"});
  EXPECT_EQ(r.exit_code, 0) << r.describe();
  for (const char* c : {"pull", "images", "inspect", "rm", "rmi", "prune", "convert", "run",
                        "kernel", "info", "volume", "ps", "logs", "stop", "kill", "wait"})
    EXPECT_NE(r.out.find(c), std::string::npos) << "help does not mention " << c;
}

TEST(Cli, RunRefusesDockerFlagsItDoesNotOfferWithOneLine) {
  struct Case {
    std::vector<std::string> args;
    const char* says;
  };
  for (const Case& c : {Case{{"run", "--privileged", "busybox"}, "already root"},
                        Case{{"run", "--no-such-flag", "busybox"}, "--no-such-flag"}}) {
    auto r = img2vm(c.args);
    EXPECT_EQ(r.exit_code, 2) << r.describe();
    EXPECT_TRUE(r.out.empty()) << r.describe();
    EXPECT_NE(r.err.find(c.says), std::string::npos) << r.describe();
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.describe();
  }
  // What -d and --name do not take (yet), and a -d share that cannot be served: refused before
  // anything is pulled (exit 125, as every run failure of img2vm's own).
  for (const Case& c :
       {Case{{"run", "-d", "-v", "/no/such/dir:/x", "nosuch.invalid/x"},
             "bind source path does not exist"},
        Case{{"run", "-d", "--network", "tap", "nosuch.invalid/x"}, "--network tap"},
        Case{{"run", "-d", "-i", "nosuch.invalid/x"}, "not with -i or -t"},
        Case{{"run", "-d", "--name", "bad name", "nosuch.invalid/x"}, "Invalid container name"}}) {
    auto r = img2vm(c.args);
    EXPECT_EQ(r.exit_code, 125) << r.describe();
    EXPECT_NE(r.err.find(c.says), std::string::npos) << r.describe();
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.describe();
  }
  auto none = img2vm({"run"});
  EXPECT_EQ(none.exit_code, 2) << none.describe();
  EXPECT_NE(none.err.find("no image given"), std::string::npos) << none.describe();
}

TEST(Cli, RunValidatesOptionsBeforeTouchingKvmOrTheStore) {
  // Bad values fail with 125 (docker run's "could not run") naming the option, before any
  // pull or KVM access: the image here does not exist anywhere.
  struct Case {
    std::vector<std::string> args;
    const char* says;
  };
  for (const Case& c :
       {Case{{"run", "--memory", "1k", "nosuch.invalid/x"}, "--memory"},
        Case{{"run", "--timeout", "soon", "nosuch.invalid/x"}, "--timeout"},
        Case{{"run", "--env-file", "/nonexistent/env", "nosuch.invalid/x"}, "/nonexistent/env"},
        Case{{"run", "-w", "relative", "nosuch.invalid/x"}, "absolute"},
        Case{{"run", "--log-level", "loud", "nosuch.invalid/x"}, "--log-level"},
        Case{{"run", "--keep", "/tmp/k.ext4", "--rm", "nosuch.invalid/x"}, "--keep"},
        Case{{"run", "--cpus", "0", "nosuch.invalid/x"}, "--cpus"},
        Case{{"run", "-t", "nosuch.invalid/x"}, "not a TTY"},
        Case{{"run", "--network", "host", "nosuch.invalid/x"}, "own kernel"},
        Case{{"run", "--network", "wifi", "nosuch.invalid/x"}, "use user, none or tap"},
        Case{{"run", "--network", "user:fast=on", "nosuch.invalid/x"},
             "unknown option \"fast=on\""},
        Case{{"run", "--network", "user:outbound=maybe", "nosuch.invalid/x"}, "on or off"},
        Case{{"run", "--network", "tap=a/b", "nosuch.invalid/x"}, "not a valid interface name"},
        Case{{"run", "--network", "none", "-p", "8080:80", "nosuch.invalid/x"}, "--network none"},
        Case{{"run", "--network", "none", "-P", "nosuch.invalid/x"}, "--network none"},
        Case{{"run", "-p", "8080:80/sctp", "nosuch.invalid/x"}, "8080:80/sctp"},
        Case{{"run", "-p", "99999:80", "nosuch.invalid/x"}, "99999:80"},
        Case{{"run", "--expose", "80/icmp", "-P", "nosuch.invalid/x"}, "--expose 80/icmp"},
        Case{{"run", "-v", "x y:/data", "nosuch.invalid/x"},
             "\"x y\" includes invalid characters for a local volume name"},
        Case{{"run", "--mount", "type=volume,src=/srv,dst=/d", "nosuch.invalid/x"},
             "the source of a volume is a name, not a path"},
        Case{{"run", "-v", "data:/data:z", "nosuch.invalid/x"}, "(ro, rw or nocopy)"},
        Case{{"run", "-v", "/nonexistent/dir:/data", "nosuch.invalid/x"},
             "bind source path does not exist: /nonexistent/dir"},
        Case{{"run", "--mount", "type=bind,src=/tmp", "nosuch.invalid/x"}, "target is required"},
        Case{{"run", "--tmpfs", "/run:noexec", "nosuch.invalid/x"}, "'noexec' is not supported"},
        Case{{"run", "-v", "/tmp:/x", "--tmpfs", "/x/", "nosuch.invalid/x"},
             "Duplicate mount point: /x"}}) {
    auto r = img2vm(c.args);
    EXPECT_EQ(r.exit_code, 125) << r.describe();
    EXPECT_NE(r.err.find(c.says), std::string::npos) << r.describe();
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.describe();
  }
  // snapshot create refuses a network a snapshot cannot hold, or a run's options of one,
  // before KVM or the store.
  for (const char* net : {"tap:img2vm-t1", "netns:/run/netns/x", "user:outbound=off"}) {
    auto r = img2vm({"snapshot", "create", "--network", net, "nosuch.invalid/x"});
    EXPECT_EQ(r.exit_code, 1) << r.describe();
    EXPECT_NE(r.err.find("--network " + std::string(net) +
                         ": a snapshot is of a VM with the user network, a tap network or none"),
              std::string::npos)
        << r.describe();
  }
}

// `volume create|ls|inspect|rm|prune` on a store of its own, as docker's commands print.
TEST(CliVolume, CreateListInspectRemovePrune) {
  img2vm::TempDir home("img2vm-cli-volume");
  const std::map<std::string, std::string> env = {{"IMG2VM_HOME", home.path().string()}};
  auto v = [&](std::vector<std::string> args) {
    args.insert(args.begin(), "volume");
    return img2vm(args, env);
  };
  auto created = v({"create", "zdata"});
  ASSERT_EQ(created.exit_code, 0) << created.describe();
  EXPECT_EQ(created.out, "zdata\n");
  auto random = v({"create"});
  ASSERT_EQ(random.exit_code, 0) << random.describe();
  const std::string rnd = random.out.substr(0, random.out.size() - 1);
  EXPECT_EQ(rnd.size(), 64u) << random.out;

  auto ls = v({"ls"});
  EXPECT_EQ(ls.exit_code, 0) << ls.describe();
  EXPECT_EQ(ls.out, "DRIVER    VOLUME NAME\nlocal     " + rnd + "\nlocal     zdata\n");
  EXPECT_EQ(v({"ls", "-q"}).out, rnd + "\nzdata\n");
  auto json = v({"ls", "--json"});
  EXPECT_EQ(nlohmann::json::parse(json.out.substr(json.out.find('\n') + 1))["Mountpoint"],
            (home.path() / "volumes/zdata/_data").string());

  auto inspect = v({"inspect", "zdata"});
  ASSERT_EQ(inspect.exit_code, 0) << inspect.describe();
  auto j = nlohmann::json::parse(inspect.out);
  ASSERT_EQ(j.size(), 1u);
  EXPECT_EQ(j[0]["Name"], "zdata");
  EXPECT_EQ(j[0]["Driver"], "local");
  EXPECT_EQ(j[0]["Labels"], nlohmann::json::object());
  EXPECT_EQ(j[0]["CreatedAt"].get<std::string>().size(), 20u);
  auto missing = v({"inspect", "nosuch"});
  EXPECT_EQ(missing.exit_code, 1) << missing.describe();
  EXPECT_EQ(missing.err, "img2vm: no such volume: nosuch\n");
  auto bad = v({"create", "-bad"});
  EXPECT_NE(bad.exit_code, 0) << bad.describe();

  // rm: a missing name is an error unless -f; the others are still removed.
  auto rm = v({"rm", "nosuch", "zdata"});
  EXPECT_EQ(rm.exit_code, 1) << rm.describe();
  EXPECT_EQ(rm.out, "zdata\n");
  EXPECT_EQ(rm.err, "img2vm: no such volume: nosuch\n");
  EXPECT_EQ(v({"rm", "-f", "nosuch"}).exit_code, 0);

  // prune: anonymous volumes only (none here) unless -a.
  auto prune = v({"prune"});
  EXPECT_EQ(prune.out, "Total reclaimed space: 0 B\n") << prune.describe();
  auto all = v({"prune", "-a", "-f"});
  EXPECT_EQ(all.out, "Deleted Volumes:\n" + rnd + "\n\nTotal reclaimed space: 0 B\n")
      << all.describe();
  EXPECT_EQ(v({"ls", "-q"}).out, "");
}

TEST(Cli, RunSaysWhyWithoutKvm) {
  auto kvm = img2vm({"info", "--json"});
  ASSERT_EQ(kvm.exit_code, 0) << kvm.describe();
  if (kvm.out.find("\"unavailable\"") == std::string::npos)
    GTEST_SKIP() << "this host has a /dev/kvm";
  auto r = img2vm({"run", "busybox"});
  EXPECT_EQ(r.exit_code, 125) << r.describe();
  EXPECT_NE(r.err.find("cannot run VMs here"), std::string::npos) << r.describe();
}

TEST(Cli, RunSaysWhenTheVmmProgramIsMissingBeforePulling) {
  auto kvm = img2vm({"info", "--json"});
  ASSERT_EQ(kvm.exit_code, 0) << kvm.describe();
  if (kvm.out.find("\"unavailable\"") != std::string::npos)
    GTEST_SKIP() << "no /dev/kvm: run stops before that";
  // The image does not exist anywhere: the VMM check must come first.
  auto r = img2vm({"run", "nosuch.invalid/x"}, {{"IMG2VM_VMM", "/nonexistent/img2vm-vmm"}});
  EXPECT_EQ(r.exit_code, 125) << r.describe();
  EXPECT_NE(r.err.find("the VMM /nonexistent/img2vm-vmm (from IMG2VM_VMM) does not exist"),
            std::string::npos)
      << r.describe();
  EXPECT_EQ(r.err.find("nosuch.invalid"), std::string::npos) << r.describe();
}

TEST(Cli, UsageErrorsExit2) {
  auto none = img2vm({});
  EXPECT_EQ(none.exit_code, 2) << none.describe();
  auto unknown = img2vm({"frobnicate"});
  EXPECT_EQ(unknown.exit_code, 2) << unknown.describe();
  EXPECT_EQ(unknown.err, "img2vm: unknown command 'frobnicate' (see 'img2vm --help')\n");
  auto flag = img2vm({"--no-such-flag", "info"});
  EXPECT_EQ(flag.exit_code, 2) << flag.describe();
}

TEST(Cli, InfoReportsKvmAsJson) {
  auto r = img2vm({"--json", "info"});
  ASSERT_EQ(r.exit_code, 0) << r.describe();
  auto j = nlohmann::json::parse(r.out);
  EXPECT_FALSE(j["version"].get<std::string>().empty());
  std::string kind = j["kvm"]["kind"];
  EXPECT_TRUE(kind == "unavailable" || kind == "hardware" || kind == "pvm" || kind == "other")
      << kind;
  EXPECT_FALSE(j["kvm"]["detail"].get<std::string>().empty());
  // Global flags also work after the command.
  auto after = img2vm({"info", "--json"});
  ASSERT_EQ(after.exit_code, 0) << after.describe();
  EXPECT_EQ(nlohmann::json::parse(after.out)["kvm"], j["kvm"]);
  auto human = img2vm({"info"});
  EXPECT_EQ(human.exit_code, 0);
  EXPECT_NE(human.out.find("kvm:"), std::string::npos);
}

}  // namespace

namespace {

TEST(CliKernel, ExplicitKernelFromEnvironmentOrFlag) {
  img2vm::TempDir d("kernel");
  std::string elf =
      "\x7f"
      "ELF" +
      std::string(0x300, '\0');
  auto vmlinux = d.path() / "vmlinux";
  img2vm::write_file_atomic(vmlinux, elf);
  std::string bz(0x300, '\0');
  bz.replace(0x202, 4, "HdrS");
  auto bzimage = d.path() / "bzImage";
  img2vm::write_file_atomic(bzimage, bz);

  auto p = img2vm({"kernel", "path"}, {{"IMG2VM_KERNEL", vmlinux.string()}});
  EXPECT_EQ(p.exit_code, 0) << p.describe();
  EXPECT_EQ(p.out, vmlinux.string() + "\n");

  auto info = img2vm({"kernel", "info", "--json"}, {{"IMG2VM_KERNEL", vmlinux.string()}});
  ASSERT_EQ(info.exit_code, 0) << info.describe();
  auto j = nlohmann::json::parse(info.out);
  EXPECT_EQ(j["source"], "IMG2VM_KERNEL");
  EXPECT_EQ(j["format"], "vmlinux (ELF)");
  EXPECT_EQ(j["size"], elf.size());

  // --kernel wins over the environment.
  auto flag = img2vm({"kernel", "--kernel", bzimage.string(), "info", "--json"},
                     {{"IMG2VM_KERNEL", vmlinux.string()}});
  ASSERT_EQ(flag.exit_code, 0) << flag.describe();
  auto jf = nlohmann::json::parse(flag.out);
  EXPECT_EQ(jf["source"], "--kernel");
  EXPECT_EQ(jf["format"], "bzImage");
}

TEST(CliKernel, MissingKernelIsOneClearLine) {
  auto r = img2vm({"kernel", "path"}, {{"IMG2VM_KERNEL", "/nonexistent/vmlinux"}});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(r.err,
            "img2vm: kernel image /nonexistent/vmlinux (from IMG2VM_KERNEL) does not exist\n");
  auto none = img2vm({"kernel"});
  EXPECT_EQ(none.exit_code, 2) << none.describe();
}

}  // namespace

namespace {

// run --rootfs DIR [CMD...]: what is wrong with the directory, its config or the words after it
// is one line and exit 125, before KVM is looked at (this host has none).
TEST(Cli, RunRootfsErrors) {
  img2vm::TempDir t("cli-rootfs");
  const std::string dir = (t.path() / "rootfs").string();
  std::filesystem::create_directories(dir);
  img2vm::write_file_atomic(t.path() / "file", "x");
  struct Case {
    std::vector<std::string> args;
    const char* says;
  };
  for (const Case& c : {
           Case{{"run", "--rootfs", (t.path() / "nope").string(), "true"}, "does not exist"},
           Case{{"run", "--rootfs", (t.path() / "file").string(), "true"}, "is not a directory"},
           Case{{"run", "--rootfs", dir, "busybox:latest", "true"}, "looks like an image"},
           Case{{"run", "--rootfs", dir, "oci:/tmp/layout", "true"}, "looks like an image"},
           Case{{"run", "--rootfs", dir}, "has no image config"},
           Case{{"run", "--rootfs", dir, "--entrypoint", ""}, "has no image config"},
           Case{{"run", "--rootfs", dir, "--keep", "/tmp/k.ext4", "true"}, "--keep: not with"},
           Case{{"run", "--rootfs", dir, "--platform", "linux/arm64", "true"}, "--platform"},
           Case{{"run", "--read-only", "nosuch.invalid/x"}, "--read-only"},
           Case{{"run", "--virtiofsd", (t.path() / "file").string(), "--rootfs", dir, "true"},
                "does not exist or is not executable"},
           Case{{"run", "--virtiofsd", "/no/virtiofsd", "-v", dir + ":/d", "nosuch.invalid/x"},
                "virtiofsd /no/virtiofsd does not exist or is not executable"},
       }) {
    auto r = img2vm(c.args);
    EXPECT_EQ(r.exit_code, 125) << r.describe();
    EXPECT_NE(r.err.find(c.says), std::string::npos) << r.describe();
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.describe();
  }
  // A config beside it (umoci's bundle) or a command: past these checks, on to KVM.
  auto kvm = img2vm({"info", "--json"});
  if (kvm.out.find("\"unavailable\"") == std::string::npos) return;  // it would boot
  img2vm::write_file_atomic(
      t.path() / "config.json",
      R"({"ociVersion":"1.0.2","root":{"path":"rootfs"},"process":{"args":["true"]}})");
  for (const std::vector<std::string>& args :
       {std::vector<std::string>{"run", "--rootfs", dir},
        std::vector<std::string>{"run", "--rootfs", dir, "--read-only", "/bin/true"}}) {
    auto r = img2vm(args);
    EXPECT_EQ(r.exit_code, 125) << r.describe();
    EXPECT_NE(r.err.find("cannot run VMs here"), std::string::npos) << r.describe();
  }
}

}  // namespace
