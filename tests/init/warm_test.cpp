// What the init reads before the snapshot point (init/warm.hpp): the image's program, the
// interpreters it goes through and the shared libraries they need, found as the run will find
// them, from real executables and damaged ones.
#include "img2vm/init/warm.hpp"

#include <gtest/gtest.h>
#include <sys/stat.h>

#include <algorithm>
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

namespace {

// A ReadAt over `bytes` (a file's content, whole or cut short).
ReadAt reader(const std::string& bytes) {
  return [&bytes](uint64_t offset, std::size_t length) -> std::string {
    if (offset >= bytes.size()) return {};
    return bytes.substr(offset, length);
  };
}

std::vector<std::string> needed(const std::string& bytes) {
  return needed_libraries(std::string_view(bytes).substr(0, kExecHeadBytes), reader(bytes));
}

}  // namespace

TEST(Warm, NeededLibrariesOfRealExecutables) {
  const std::string true_elf = img2vm::read_file(kHostProgram);
  EXPECT_EQ(needed(true_elf), (std::vector<std::string>{"libc.so.6"}));
  // This test program: C++, so libstdc++ and libc at least, each once, each a plain name.
  const std::vector<std::string> self = needed(img2vm::read_file("/proc/self/exe"));
  for (const char* lib : {"libstdc++.so.6", "libc.so.6"})
    EXPECT_EQ(std::count(self.begin(), self.end(), lib), 1) << lib;
  for (const std::string& n : self) EXPECT_EQ(n.find('/'), std::string::npos) << n;
  // Not an ELF file, or a static one: nothing.
  EXPECT_TRUE(needed("#!/bin/sh\n").empty());
  EXPECT_TRUE(needed(img2vm::read_file("/bin/busybox")).empty());

  // Every cut of the file (a read past its end gets fewer bytes): libc.so.6 or nothing.
  for (std::size_t n = 0; n <= true_elf.size(); n += 61) {
    const std::vector<std::string> got = needed(true_elf.substr(0, n));
    EXPECT_TRUE(got.empty() || got == std::vector<std::string>{"libc.so.6"}) << n;
  }
  // Damaged program headers or dynamic section: nothing, never a read past what is there.
  auto patched = [&](std::size_t at, const std::string& bytes) {
    std::string e = true_elf;
    e.replace(at, bytes.size(), bytes);
    return needed(e);
  };
  EXPECT_TRUE(patched(4, std::string(1, '\1')).empty());     // 32-bit class
  EXPECT_TRUE(patched(32, std::string(8, '\xff')).empty());  // e_phoff far away
  EXPECT_TRUE(patched(56, std::string("\0\0", 2)).empty());  // no program headers
}

namespace {

void put_le_at(std::string& f, std::size_t at, uint64_t v, int n) {
  for (int i = 0; i < n; ++i) f[at + i] = char((v >> (8 * i)) & 0xff);
}

// `size` bytes of a 64-bit little-endian ELF file: one PT_LOAD mapping all of it at 0x400000,
// one PT_DYNAMIC of `dyn_size` bytes at 0x200 (to be filled), nothing else.
std::string elf_skeleton(std::size_t size, uint64_t dyn_size) {
  std::string f(size, '\0');
  f.replace(0, 4,
            "\x7f"
            "ELF");
  f[4] = 2;
  f[5] = 1;
  put_le_at(f, 32, 64, 8);  // e_phoff
  put_le_at(f, 54, 56, 2);  // e_phentsize
  put_le_at(f, 56, 2, 2);   // e_phnum
  put_le_at(f, 64, 1, 4);   // PT_LOAD, from offset 0
  put_le_at(f, 80, 0x400000, 8);
  put_le_at(f, 96, size, 8);  // p_filesz
  put_le_at(f, 120, 2, 4);    // PT_DYNAMIC
  put_le_at(f, 128, 0x200, 8);
  put_le_at(f, 152, dyn_size, 8);
  return f;
}

}  // namespace

TEST(Warm, NeededLibrariesNeverTrustTheDynamicSection) {
  // A minimal ELF head: one PT_LOAD mapping the file at 0x400000, one PT_DYNAMIC at 0x200, the
  // string table at 0x300 (vaddr 0x400300) holding "libz.so.1\0../evil\0libz.so.1\0".
  std::string f = elf_skeleton(0x400, 0x80);
  auto put_le = [&f](std::size_t at, uint64_t v, int n) { put_le_at(f, at, v, n); };
  const std::string strings("libz.so.1\0../evil\0libz.so.1\0", 28);
  f.replace(0x300, strings.size(), strings);
  auto dyn = [&](int i, uint64_t tag, uint64_t val) {
    put_le(0x200 + 16 * i, tag, 8);
    put_le(0x200 + 16 * i + 8, val, 8);
  };
  dyn(0, 1, 0);         // DT_NEEDED libz.so.1
  dyn(1, 1, 10);        // DT_NEEDED ../evil: a path, skipped
  dyn(2, 1, 18);        // DT_NEEDED libz.so.1 again: listed once
  dyn(3, 1, 1000);      // past the table: skipped
  dyn(4, 5, 0x400300);  // DT_STRTAB
  dyn(5, 10, 28);       // DT_STRSZ
  EXPECT_EQ(needed(f), (std::vector<std::string>{"libz.so.1"}));
  dyn(5, 10, 5);  // a table too short for the name's end: nothing
  EXPECT_TRUE(needed(f).empty());
  dyn(5, 10, 28);
  dyn(4, 5, 0x900000);  // a table outside every PT_LOAD: nothing
  EXPECT_TRUE(needed(f).empty());
  dyn(4, 5, UINT64_MAX);
  EXPECT_TRUE(needed(f).empty());
}

TEST(Warm, FilesIncludeTheSharedLibrariesTheProgramNeeds) {
  img2vm::TempDir root("warm-test");
  const fs::path r = root.path();
  const std::string libc = "/lib/x86_64-linux-gnu/libc.so.6";
  put(r / "bin/app", img2vm::read_file(kHostProgram));
  put(r / "lib64/ld-linux-x86-64.so.2", "a loader", 0644);
  RuntimeConfig app = command({}, {"app"});
  app.env = {"PATH=/bin"};
  EXPECT_EQ(warm_files(r, app), (std::vector<std::string>{"/bin/app", kLoader}));  // none found
  put(r / libc.substr(1), img2vm::read_file(libc), 0644);
  // libc itself needs the loader, listed already.
  EXPECT_EQ(warm_files(r, app), (std::vector<std::string>{"/bin/app", kLoader, libc}));
  // The image's LD_LIBRARY_PATH comes first (relative entries are ignored).
  put(r / "opt/lib/libc.so.6", img2vm::read_file(libc), 0644);
  app.env = {"PATH=/bin", "LD_LIBRARY_PATH=lib:/opt/lib/"};
  EXPECT_EQ(warm_files(r, app),
            (std::vector<std::string>{"/bin/app", kLoader, "/opt/lib/libc.so.6"}));
  // A FIFO where the library would be is never opened.
  fs::remove(r / "opt/lib/libc.so.6");
  ASSERT_EQ(::mkfifo((r / "opt/lib/libc.so.6").c_str(), 0644), 0);
  EXPECT_EQ(warm_files(r, app), (std::vector<std::string>{"/bin/app", kLoader, libc}));
  // As on Debian, the interpreter's path is a link to the loader that libc names from its own
  // directory: one file, listed once. glibc's cache of library paths comes last.
  fs::remove(r / "lib64/ld-linux-x86-64.so.2");
  put(r / "lib/x86_64-linux-gnu/ld-linux-x86-64.so.2", "a loader", 0644);
  fs::create_symlink("../lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
                     r / "lib64/ld-linux-x86-64.so.2");
  put(r / "etc/ld.so.cache", "a cache", 0644);
  EXPECT_EQ(warm_files(r, app),
            (std::vector<std::string>{"/bin/app", kLoader, libc, "/etc/ld.so.cache"}));
  // A static program needs no cache.
  put(r / "bin/static", img2vm::read_file("/bin/busybox"));
  EXPECT_EQ(warm_files(r, command({"/bin/static"}, {})), (std::vector<std::string>{"/bin/static"}));
}

namespace {

// A minimal 64-bit ELF file: one PT_LOAD mapping it at 0x400000, a PT_DYNAMIC at 0x200 whose
// DT_NEEDED entries name `needed`, with a DT_RPATH and a DT_RUNPATH when not empty; the string
// table at 0x400. No PT_INTERP: warm_files() lists no loader for it.
std::string tiny_elf(const std::vector<std::string>& needed, const std::string& rpath = "",
                     const std::string& runpath = "") {
  std::string f = elf_skeleton(0x1000, 0x100);
  auto put_le = [&f](std::size_t at, uint64_t v, int n) { put_le_at(f, at, v, n); };
  std::string strings(1, '\0');
  int entry = 0;
  auto dyn = [&](uint64_t tag, uint64_t val) {
    put_le(0x200 + 16 * entry, tag, 8);
    put_le(0x200 + 16 * entry + 8, val, 8);
    ++entry;
  };
  auto add = [&](const std::string& str) {
    const uint64_t at = strings.size();
    strings += str + '\0';
    return at;
  };
  for (const std::string& n : needed) dyn(1, add(n));
  if (!rpath.empty()) dyn(15, add(rpath));
  if (!runpath.empty()) dyn(29, add(runpath));
  dyn(5, 0x400400);  // DT_STRTAB
  dyn(10, strings.size());
  f.replace(0x400, strings.size(), strings);
  return f;
}

DynamicNeeds needs(const std::string& bytes) {
  return dynamic_needs(std::string_view(bytes).substr(0, kExecHeadBytes), reader(bytes));
}

}  // namespace

TEST(Warm, SearchPathsAsTheLoaderTakesThem) {
  const std::string object = "/app/bin/prog";
  EXPECT_EQ(search_path_dirs("$ORIGIN/../lib:/opt/x/:relative:${ORIGIN}::/a/./b/../c:$LIB/x:"
                             "/opt/x:$PLATFORM",
                             object),
            (std::vector<std::string>{"/app/lib", "/opt/x", "/app/bin", "/a/c"}));
  EXPECT_EQ(search_path_dirs("/$ORIGIN$ORIGIN", "/p/q"), (std::vector<std::string>{"/p/p"}));
  EXPECT_EQ(search_path_dirs("/../../etc", object), (std::vector<std::string>{"/etc"}));
  // The object's own path may hold the token: replaced once, never again.
  EXPECT_EQ(search_path_dirs("$ORIGIN/lib:${ORIGIN}", "/x/$ORIGIN/prog"),
            (std::vector<std::string>{"/x/$ORIGIN/lib", "/x/$ORIGIN"}));
  // Grown past kMaxSearchPath by its tokens: left out.
  std::string tokens;
  for (int i = 0; i < 600; ++i) tokens += "$ORIGIN";
  EXPECT_TRUE(search_path_dirs(tokens, "/" + std::string(200, 'd') + "/prog").empty());
  EXPECT_TRUE(search_path_dirs("", object).empty());
  std::string many;
  for (int i = 0; i < 40; ++i) many += "/d" + std::to_string(i) + ":";
  EXPECT_EQ(search_path_dirs(many, object).size(), kMaxSearchDirs);
}

TEST(Warm, DynamicNeedsReadRpathAndRunpath) {
  const DynamicNeeds d = needs(tiny_elf({"liba.so", "libb.so"}, "/opt/r", "$ORIGIN/../lib"));
  EXPECT_EQ(d.needed, (std::vector<std::string>{"liba.so", "libb.so"}));
  EXPECT_EQ(d.rpath, "/opt/r");
  EXPECT_EQ(d.runpath, "$ORIGIN/../lib");
  const DynamicNeeds none = needs(tiny_elf({"liba.so"}));
  EXPECT_TRUE(none.rpath.empty() && none.runpath.empty());
  // Longer than kMaxSearchPath: left out, the names still read.
  const DynamicNeeds big = needs(tiny_elf({"liba.so"}, std::string(kMaxSearchPath + 1, 'x')));
  EXPECT_EQ(big.needed, (std::vector<std::string>{"liba.so"}));
  EXPECT_TRUE(big.rpath.empty());
  // The host's own programs have none (Debian's), and this test program's, if any, is what
  // the linker wrote: readable either way, never a crash.
  EXPECT_TRUE(needs(img2vm::read_file(kHostProgram)).runpath.empty());
  // Every cut of a file with both: the names it had or fewer, a path it had or none.
  const std::string f = tiny_elf({"liba.so"}, "/opt/r", "/opt/run");
  for (std::size_t n = 0; n <= f.size(); n += 7) {
    const DynamicNeeds c = needs(f.substr(0, n));
    EXPECT_TRUE(c.rpath.empty() || c.rpath == "/opt/r") << n;
    EXPECT_TRUE(c.runpath.empty() || c.runpath == "/opt/run") << n;
  }
}

// Libraries found through DT_RUNPATH ($ORIGIN-relative, after LD_LIBRARY_PATH) and DT_RPATH
// (before LD_LIBRARY_PATH, and inherited by what the program's libraries need), as glibc's
// loader finds them; neither is in the default directories here.
TEST(Warm, FilesFollowRpathAndRunpath) {
  img2vm::TempDir root("warm-test");
  const fs::path r = root.path();
  RuntimeConfig app = command({"/app/bin/prog"}, {});
  put(r / "app/bin/prog", tiny_elf({"liba.so"}, "", "$ORIGIN/../lib"));
  put(r / "app/lib/liba.so", tiny_elf({}), 0644);
  EXPECT_EQ(warm_files(r, app), (std::vector<std::string>{"/app/bin/prog", "/app/lib/liba.so"}));
  // RUNPATH comes after LD_LIBRARY_PATH.
  put(r / "env/liba.so", tiny_elf({}), 0644);
  app.env = {"LD_LIBRARY_PATH=/env"};
  EXPECT_EQ(warm_files(r, app), (std::vector<std::string>{"/app/bin/prog", "/env/liba.so"}));
  // RPATH comes before it, and is searched for the needs of what the program needs (liba.so
  // has no search path of its own: libb.so is found through the program's RPATH).
  put(r / "app/bin/prog", tiny_elf({"liba.so"}, "/app/lib"));
  put(r / "app/lib/liba.so", tiny_elf({"libb.so"}), 0644);
  put(r / "app/lib/libb.so", tiny_elf({}), 0644);
  EXPECT_EQ(warm_files(r, app),
            (std::vector<std::string>{"/app/bin/prog", "/app/lib/liba.so", "/app/lib/libb.so"}));
  // A library with a RUNPATH of its own searches that, not the RPATH it inherited.
  put(r / "app/lib/liba.so", tiny_elf({"libb.so"}, "", "/other"), 0644);
  put(r / "other/libb.so", tiny_elf({}), 0644);
  EXPECT_EQ(warm_files(r, app),
            (std::vector<std::string>{"/app/bin/prog", "/app/lib/liba.so", "/other/libb.so"}));
  // Without either, neither directory is searched.
  put(r / "app/bin/prog", tiny_elf({"liba.so"}));
  app.env.clear();
  EXPECT_EQ(warm_files(r, app), (std::vector<std::string>{"/app/bin/prog"}));
}
