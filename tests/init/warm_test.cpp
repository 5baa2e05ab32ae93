// What the init reads before the snapshot point (init/warm.hpp): the image's program and the
// interpreters it goes through, found as the run will find them, from real executables and
// damaged ones.
#include "img2vm/init/warm.hpp"

#include <gtest/gtest.h>
#include <sys/stat.h>

#include <filesystem>
#include <string>
#include <vector>

#include "img2vm/base/fd.hpp"
#include "img2vm/guestabi/config.hpp"

using namespace img2vm::init;
namespace fs = std::filesystem;
using img2vm::guestabi::RuntimeConfig;

namespace {

const char* kHostProgram = "/bin/true";  // a dynamically linked PIE on Debian
const std::string kLoader = "/lib64/ld-linux-x86-64.so.2";

std::string head_of(const fs::path& p) {
  std::string s = img2vm::read_file(p);
  return s.substr(0, kExecHeadBytes);
}

void put(const fs::path& p, const std::string& content, mode_t mode = 0755) {
  fs::create_directories(p.parent_path());
  img2vm::write_file_atomic(p, content, static_cast<int>(mode));
}

RuntimeConfig command(std::vector<std::string> entrypoint, std::vector<std::string> cmd) {
  RuntimeConfig c;
  c.entrypoint = std::move(entrypoint);
  c.cmd = std::move(cmd);
  return c;
}

}  // namespace

TEST(Warm, InterpreterOfScriptsAndElfExecutables) {
  EXPECT_EQ(interpreter_of("#!/bin/sh -e\necho hi\n"), "/bin/sh");
  EXPECT_EQ(interpreter_of("#! \t/usr/bin/env python3\n"), "/usr/bin/env");
  EXPECT_EQ(interpreter_of("#!/bin/sh"), "/bin/sh");
  EXPECT_EQ(interpreter_of("#!python\n"), "");  // relative: not followed
  EXPECT_EQ(interpreter_of("#!\n/bin/sh\n"), "");
  EXPECT_EQ(interpreter_of("#!"), "");
  EXPECT_EQ(interpreter_of(std::string("#!/bin/sh\0x\n", 13)), "/bin/sh");    // a NUL ends it
  EXPECT_EQ(interpreter_of("#!" + std::string(300, ' ') + "/bin/sh\n"), "");  // past 256 bytes
  EXPECT_EQ(interpreter_of(""), "");
  EXPECT_EQ(interpreter_of("just text"), "");

  const std::string elf = head_of(kHostProgram);
  ASSERT_EQ(elf.size(), kExecHeadBytes);
  EXPECT_EQ(interpreter_of(elf), kLoader);
  // Every cut of the head: the whole loader's path or nothing, never a piece or a read past it.
  for (std::size_t n = 0; n <= elf.size(); ++n) {
    const std::string got = interpreter_of(std::string_view(elf).substr(0, n));
    EXPECT_TRUE(got.empty() || got == kLoader) << n << ": " << got;
  }
  // Damaged headers: nothing.
  auto patched = [&](std::size_t at, std::string bytes) {
    std::string e = elf;
    e.replace(at, bytes.size(), bytes);
    return interpreter_of(e);
  };
  EXPECT_EQ(patched(4, std::string(1, '\1')), "");       // 32-bit class
  EXPECT_EQ(patched(5, std::string(1, '\2')), "");       // big-endian
  EXPECT_EQ(patched(32, std::string(8, '\xff')), "");    // e_phoff far away
  EXPECT_EQ(patched(54, std::string("\x20\0", 2)), "");  // e_phentsize 32
  EXPECT_EQ(patched(56, std::string("\0\0", 2)), "");    // no program headers
  EXPECT_EQ(patched(56, std::string("\xff\xff", 2)).empty() ||
                patched(56, std::string("\xff\xff", 2)) == kLoader,
            true);  // 65535 headers: read only as far as the head goes
}

TEST(Warm, FilesAreTheImagesProgramAndItsInterpreters) {
  img2vm::TempDir root("warm-test");
  const fs::path r = root.path();
  const std::string elf = img2vm::read_file(kHostProgram);
  put(r / "bin/app", elf);
  put(r / "bin/sh", elf);
  put(r / "lib64/ld-linux-x86-64.so.2", "a loader", 0644);
  put(r / "usr/local/bin/entry.sh", "#!/bin/sh\nexec app\n");
  put(r / "srv/run", "#!/bin/run-self\n");
  put(r / "bin/run-self", "#!/bin/run-self\n");
  put(r / "bin/orphan", "#!/bin/missing\n");

  RuntimeConfig app = command({}, {"app", "arg"});
  app.env = {"PATH=/bin"};
  EXPECT_EQ(warm_files(r, app), (std::vector<std::string>{"/bin/app", kLoader}));
  // The default PATH, Entrypoint first: a script, its interpreter, that one's loader.
  EXPECT_EQ(warm_files(r, command({"entry.sh"}, {"ignored"})),
            (std::vector<std::string>{"/usr/local/bin/entry.sh", "/bin/sh", kLoader}));
  // Relative to the WorkingDir; an interpreter naming itself is read once.
  RuntimeConfig rel = command({}, {"./run"});
  rel.working_dir = "/srv";
  EXPECT_EQ(warm_files(r, rel), (std::vector<std::string>{"/srv/run", "/bin/run-self"}));
  EXPECT_EQ(warm_files(r, command({"/bin/orphan"}, {})), (std::vector<std::string>{"/bin/orphan"}));
  // Nothing to read: no command, one not found, one not executable.
  EXPECT_TRUE(warm_files(r, command({}, {})).empty());
  EXPECT_TRUE(warm_files(r, command({}, {"nowhere"})).empty());
  put(r / "bin/plain", "data", 0644);
  EXPECT_TRUE(warm_files(r, command({"/bin/plain"}, {})).empty());
  // A FIFO (or a device node) named as the program is never opened: nothing blocks, nothing is
  // listed.
  ASSERT_EQ(::mkfifo((r / "bin/fifo").c_str(), 0755), 0);
  EXPECT_TRUE(warm_files(r, command({"/bin/fifo"}, {})).empty());
  EXPECT_EQ(read_through((r / "bin/fifo").string(), 1 << 20), 0u);
}

TEST(Warm, ReadThroughReadsUpToItsBudget) {
  img2vm::TempDir dir("warm-test");
  put(dir.path() / "f", std::string(1 << 20, 'x'), 0644);
  const std::string f = (dir.path() / "f").string();
  EXPECT_EQ(read_through(f, 100), 100u);
  EXPECT_EQ(read_through(f, 1ull << 30), 1u << 20);
  EXPECT_EQ(read_through(f, 0), 0u);
  EXPECT_EQ(read_through(dir.path().string(), 1 << 20), 0u);
  EXPECT_EQ(read_through((dir.path() / "missing").string(), 1 << 20), 0u);
}
