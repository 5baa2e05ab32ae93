// The installed package used the way an outsider would: `cmake --install` of this build into a
// temporary prefix, examples/hello copied out of the source tree, configured and built with
// CMAKE_PREFIX_PATH set to that prefix alone, and run against a real docker-registry. Without
// KVM the example stops after the conversion and says why; with it, it boots.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "image_builder.hpp"
#include "img2vm/base/fd.hpp"
#include "img2vm/vm/kvm_detect.hpp"
#include "process.hpp"
#include "registry.hpp"
#include "skopeo.hpp"

using namespace img2vm;
using namespace img2vm::testing;
namespace fs = std::filesystem;

namespace {

std::string slurp(const fs::path& p) {
  std::ifstream in(p);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// `cmake ARGS...`, asserting success.
void cmake(std::vector<std::string> args) {
  args.insert(args.begin(), "cmake");
  RunOptions o;
  o.timeout = std::chrono::minutes(10);
  CommandResult r = run_command(args, o);
  ASSERT_EQ(r.exit_code, 0) << r.describe() << "\n" << r.out;
}

}  // namespace

TEST(Install, ExampleBuiltAgainstThePrefixAlonePullsAndConverts) {
  TempDir prefix("img2vm-prefix");
  const fs::path p = prefix.path();
  ASSERT_NO_FATAL_FAILURE(cmake({"--install", IMG2VM_BUILD_DIR, "--prefix", p.string()}));

  // What an embedder finds there; device internals stay out.
  const fs::path lib = p / IMG2VM_INSTALL_LIBDIR;
  for (const fs::path& f :
       {p / "include/img2vm/runtime/runtime.hpp", p / "include/img2vm/vm/machine.hpp",
        p / "include/img2vm/guestabi/config.hpp", lib / "libimg2vm_runtime.a",
        lib / "libimg2vm_vm.a", lib / "libimg2vm_base.a", lib / "cmake/img2vm/img2vmConfig.cmake",
        lib / "cmake/img2vm/img2vmConfigVersion.cmake", lib / "cmake/img2vm/img2vmTargets.cmake",
        lib / "pkgconfig/img2vm.pc", p / "bin/img2vm", p / "libexec/img2vm/img2vm-vmm",
        p / "libexec/img2vm/img2vm-init", p / "libexec/img2vm/img2vm-netns"})
    EXPECT_TRUE(fs::is_regular_file(f)) << f;
  for (const char* h :
       {"virtio_mmio.hpp", "virtqueue.hpp", "uart.hpp", "boot.hpp", "guest_memory.hpp"})
    EXPECT_FALSE(fs::exists(p / "include/img2vm/vm" / h)) << h;
  EXPECT_EQ(slurp(lib / "cmake/img2vm/img2vmTargets.cmake").find("img2vm_flags"),
            std::string::npos);

  // The example, out of the source tree, against the prefix alone.
  TempDir work("img2vm-example");
  const fs::path src = work.path() / "hello", build = work.path() / "build";
  fs::copy(IMG2VM_EXAMPLE_DIR, src, fs::copy_options::recursive);
  std::string flags = IMG2VM_EXAMPLE_CXX_FLAGS;
  ASSERT_NO_FATAL_FAILURE(
      cmake({"-S", src.string(), "-B", build.string(), "-G", "Ninja",
             "-DCMAKE_CXX_COMPILER=" IMG2VM_EXAMPLE_CXX_COMPILER,
             "-DCMAKE_PREFIX_PATH=" + p.string(), "-DCMAKE_EXPORT_COMPILE_COMMANDS=ON",
             "-DCMAKE_CXX_FLAGS=" + flags, "-DCMAKE_EXE_LINKER_FLAGS=" + flags}));
  EXPECT_NE(
      slurp(build / "CMakeCache.txt").find("img2vm_DIR:PATH=" + (lib / "cmake/img2vm").string()),
      std::string::npos);
  ASSERT_NO_FATAL_FAILURE(cmake({"--build", build.string()}));
  const std::string commands = slurp(build / "compile_commands.json");
  EXPECT_NE(commands.find((p / "include").string()), std::string::npos) << commands;
  EXPECT_EQ(commands.find(IMG2VM_SOURCE_TREE), std::string::npos) << commands;

  Registry reg;
  ImageSpec spec;
  spec.layers.push_back(layer({dir("bin"), file("bin/app", "#!/bin/sh\necho hi\n", 0755)}));
  spec.config.entrypoint = {"/bin/app"};
  BuiltImage img = build_image(spec);
  write_oci_layout(work.path() / "layout", {{"v1", img}});
  skopeo_push("oci:" + (work.path() / "layout").string() + ":v1", reg, "example/app:v1");

  // The installed programs, not this build tree's.
  RunOptions o;
  o.env["IMG2VM_INIT"] = (p / "libexec/img2vm/img2vm-init").string();
  o.env["IMG2VM_VMM"] = (p / "libexec/img2vm/img2vm-vmm").string();
  o.env["TMPDIR"] = (work.path() / "tmp").string();
  fs::create_directory(work.path() / "tmp");
  o.timeout = std::chrono::minutes(10);
  CommandResult r = run_command({(build / "hello").string(), reg.host() + "/example/app:v1"}, o);
  ASSERT_EQ(r.exit_code, 0) << r.describe() << "\n" << r.out;
  EXPECT_NE(r.out.find("pulled " + reg.host() + "/example/app:v1 (manifest " +
                       img.manifest.digest.str() + ")"),
            std::string::npos)
      << r.out;
  EXPECT_NE(r.out.find("converted to "), std::string::npos) << r.out;
  if (vm::detect_kvm().kind == vm::KvmKind::kUnavailable)
    EXPECT_NE(r.out.find("not booting: KVM is unavailable on this host ("), std::string::npos)
        << r.out;
  else
    EXPECT_TRUE(r.out.find("workload exited with status ") != std::string::npos ||
                r.out.find("not booting: no guest kernel is built yet") != std::string::npos)
        << r.out;
  // Its temporary store is gone.
  EXPECT_TRUE(fs::is_empty(work.path() / "tmp"));

  // A reference the registry lacks: one line, exit 1, nothing left behind.
  r = run_command({(build / "hello").string(), reg.host() + "/example/app:missing"}, o);
  EXPECT_EQ(r.exit_code, 1) << r.describe();
  EXPECT_EQ(r.err.rfind("hello: ", 0), 0u) << r.err;
  EXPECT_TRUE(fs::is_empty(work.path() / "tmp"));

  // The install moved elsewhere after `cmake --install`: its img2vm finds its own programs,
  // with no variable set and this build tree's still in place. Its init is marked, so that the
  // one injected shows where it came from.
  TempDir moved_parent("img2vm-moved");
  const fs::path moved = moved_parent.path() / "prefix";
  fs::rename(p, moved);
  const std::string mark = "#!/bin/sh\n# the moved install's init\n";
  std::ofstream(moved / "libexec/img2vm/img2vm-init", std::ios::trunc) << mark;
  RunOptions m;
  m.env["IMG2VM_HOME"] = (work.path() / "home").string();
  m.env["TMPDIR"] = (work.path() / "tmp").string();
  m.env["IMG2VM_INIT"] = "";
  m.env["IMG2VM_VMM"] = "";
  m.timeout = std::chrono::minutes(5);
  const fs::path out = work.path() / "moved.ext4";
  r = run_command({(moved / "bin/img2vm").string(), "convert",
                   "oci:" + (work.path() / "layout").string() + ":v1", "-o", out.string()},
                  m);
  ASSERT_EQ(r.exit_code, 0) << r.describe() << "\n" << r.out;
  CommandResult cat = run_command({"debugfs", "-R", "cat /.img2vm/init", out.string()});
  ASSERT_EQ(cat.exit_code, 0) << cat.describe();
  EXPECT_TRUE(cat.out == mark) << "the injected init (" << cat.out.size()
                               << " bytes) is not the moved install's";
  fs::rename(moved, p);  // for the prefix's own clean-up
}
