// The img2vm-oci binary as container engines meet it, where no VM is needed: where create's
// warnings go (an engine's create has the workload's stdout and stderr, which conmon and
// containerd's shim log as the container's output), and the answers for unknown ids that
// podman and the shim read. Containers that boot are tested in tests/e2e/oci_engines_test.cpp.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "img2vm/base/fd.hpp"
#include "process.hpp"

using namespace img2vm::testing;
namespace fs = std::filesystem;

namespace {

CommandResult oci(std::vector<std::string> args, bool terminal = false) {
  args.insert(args.begin(), IMG2VM_OCI_BINARY);
  RunOptions o;
  o.terminal = terminal;
  return run_command(args, o);
}

std::string file_text(const fs::path& p) {
  std::error_code ec;
  if (!fs::exists(p, ec)) return {};
  return img2vm::read_file(p, 1 << 20);
}

// A bundle whose create fails after its warnings: capabilities and seccomp (not applied in a
// VM), then a guest kernel that does not exist.
void write_bundle(const fs::path& dir) {
  fs::create_directories(dir / "rootfs");
  nlohmann::json j = {
      {"ociVersion", "1.0.2"},
      {"root", {{"path", "rootfs"}}},
      {"process",
       {{"args", {"sh"}}, {"cwd", "/"}, {"capabilities", {{"bounding", {"CAP_CHOWN"}}}}}},
      {"linux", {{"seccomp", {{"defaultAction", "SCMP_ACT_ERRNO"}}}}},
      {"annotations", {{"org.img2vm.kernel", (dir / "no-such-kernel").string()}}}};
  img2vm::write_file_atomic(dir / "config.json", j.dump());
}

// Without --log, create's warnings stay out of its stderr (the container's output under an
// engine) and go to ROOT/img2vm-oci.log; its error is on stderr, where podman and the shim
// read it. With --log they go there, as runc's; at a terminal, to the person.
TEST(OciCli, CreatesWarningsGoToALogNotToTheWorkloadsStderr) {
  img2vm::TempDir t("img2vm-oci-cli");
  write_bundle(t.path() / "b");
  const std::string root = (t.path() / "state").string();
  auto r = oci({"--root", root, "create", "--bundle", (t.path() / "b").string(), "c1"});
  EXPECT_EQ(r.exit_code, 1) << r.describe();
  EXPECT_NE(r.err.find("no-such-kernel"), std::string::npos) << r.describe();
  EXPECT_EQ(r.err.find("capabilities"), std::string::npos) << r.describe();
  EXPECT_EQ(r.err.find("seccomp"), std::string::npos) << r.describe();
  EXPECT_TRUE(r.out.empty()) << r.describe();
  const std::string log = file_text(t.path() / "state/img2vm-oci.log");
  EXPECT_NE(log.find("warning: container c1: process.capabilities"), std::string::npos) << log;
  EXPECT_NE(log.find("warning: container c1: linux.seccomp"), std::string::npos) << log;
  // Nothing is left of a create that failed.
  auto list = oci({"--root", root, "list", "-q"});
  EXPECT_EQ(list.exit_code, 0) << list.describe();
  EXPECT_TRUE(list.out.empty()) << list.describe();

  const fs::path json_log = t.path() / "log.json";
  r = oci({"--root", root, "--log", json_log.string(), "--log-format", "json", "create", "--bundle",
           (t.path() / "b").string(), "c2"});
  EXPECT_EQ(r.exit_code, 1) << r.describe();
  EXPECT_EQ(r.err.find("capabilities"), std::string::npos) << r.describe();
  const std::string jl = file_text(json_log);
  EXPECT_NE(jl.find("{\"level\":\"warning\",\"msg\":\"container c2: process.capabilities"),
            std::string::npos)
      << jl;
  EXPECT_NE(jl.find("\"level\":\"error\""), std::string::npos) << jl;
  EXPECT_EQ(file_text(t.path() / "state/img2vm-oci.log").find("c2"), std::string::npos);

  r = oci({"--root", root, "create", "--bundle", (t.path() / "b").string(), "c3"}, true);
  EXPECT_EQ(r.exit_code, 1) << r.describe();
  EXPECT_NE(r.out.find("warning: container c3: process.capabilities"), std::string::npos)
      << r.describe();
}

// ROOT/img2vm-oci.log stays bounded: at 1 MiB it becomes img2vm-oci.log.1 (the one before goes).
TEST(OciCli, TheDefaultWarningLogIsRotatedAtOneMib) {
  img2vm::TempDir t("img2vm-oci-cli");
  write_bundle(t.path() / "b");
  const fs::path root = t.path() / "state";
  fs::create_directories(root);
  img2vm::write_file_atomic(root / "img2vm-oci.log.1", "the oldest\n");
  img2vm::write_file_atomic(root / "img2vm-oci.log", std::string((1u << 20) - 1, 'x') + "\n");
  auto r = oci({"--root", root.string(), "create", "--bundle", (t.path() / "b").string(), "c1"});
  EXPECT_EQ(r.exit_code, 1) << r.describe();
  EXPECT_EQ(fs::file_size(root / "img2vm-oci.log.1"), 1u << 20);
  const std::string log = file_text(root / "img2vm-oci.log");
  // Its first line is create's first warning; none of the old file is left in it.
  EXPECT_LT(log.find("warning: container c1: process.capabilities"), log.find('\n')) << log;
  EXPECT_EQ(log.find("xx"), std::string::npos);
}

// What engines do with ids the runtime does not know: podman's state check looks for "does not
// exist"; delete --force of an unknown id succeeds (the shim's and podman's cleanups).
TEST(OciCli, UnknownIdsAnswerAsEnginesExpect) {
  img2vm::TempDir t("img2vm-oci-cli");
  const std::string root = (t.path() / "state").string();
  auto r = oci({"--root", root, "state", "nosuch"});
  EXPECT_EQ(r.exit_code, 1) << r.describe();
  EXPECT_NE(r.err.find("does not exist"), std::string::npos) << r.describe();
  r = oci({"--root", root, "delete", "--force", "nosuch"});
  EXPECT_EQ(r.exit_code, 0) << r.describe();
  r = oci({"--root", root, "delete", "nosuch"});
  EXPECT_EQ(r.exit_code, 1) << r.describe();
  r = oci({"--root", root, "kill", "nosuch", "9"});
  EXPECT_EQ(r.exit_code, 1) << r.describe();
}

// exec's command comes from --process or the arguments, one of them: each mistake is one line
// naming it, before any container is looked at; a process file that is not one names the file.
TEST(OciCli, ExecSaysWhatIsWrongWithItsCommand) {
  img2vm::TempDir t("img2vm-oci-cli");
  const std::string root = (t.path() / "state").string();
  auto r = oci({"--root", root, "exec", "c1"});
  EXPECT_EQ(r.exit_code, 1) << r.describe();
  EXPECT_NE(r.err.find("no command: give --process FILE or ARGS"), std::string::npos)
      << r.describe();
  const fs::path process = t.path() / "process.json";
  img2vm::write_file_atomic(process, R"({"args":["true"],"cwd":"/"})");
  r = oci({"--root", root, "exec", "--process", process.string(), "c1", "echo"});
  EXPECT_EQ(r.exit_code, 1) << r.describe();
  EXPECT_NE(r.err.find("give the command in --process or as arguments, not both"),
            std::string::npos)
      << r.describe();
  img2vm::write_file_atomic(process, R"({"args":[],"cwd":"/"})");
  r = oci({"--root", root, "exec", "--process", process.string(), "c1"});
  EXPECT_EQ(r.exit_code, 1) << r.describe();
  EXPECT_NE(r.err.find("the process JSON: process.args"), std::string::npos) << r.describe();
  r = oci({"--root", root, "exec", "c1", "true"});
  EXPECT_EQ(r.exit_code, 1) << r.describe();
  EXPECT_NE(r.err.find("container c1 does not exist"), std::string::npos) << r.describe();
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.describe();
}

}  // namespace
