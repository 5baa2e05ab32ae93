// A file's first bytes in an image are the image author's: before the snapshot point the guest
// init reads its program's "#!" line or ELF program headers to find the interpreter it goes
// through, and an ELF file's dynamic section for the shared libraries it needs (init/warm.hpp).
// Whatever the bytes, nothing is read outside them; an interpreter is empty or an absolute path
// without NUL bytes found in them; a library is a plain file name (no '/', no NUL, not empty)
// found in them, listed once, at most kMaxNeeded; a search path is one of their strings, and
// the directories made of it are absolute and normalized.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "img2vm/init/warm.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string head(reinterpret_cast<const char*>(data), size);  // exactly its own bytes
  const std::string got = img2vm::init::interpreter_of(head);
  if (!got.empty() && (got.front() != '/' || got.find('\0') != std::string::npos ||
                       head.find(got) == std::string::npos))
    __builtin_trap();

  // The same bytes as a whole file: its first kExecHeadBytes as the head, the rest through reads
  // that stop at its end.
  const img2vm::init::ReadAt read_at = [&head](uint64_t offset, std::size_t length) {
    if (offset >= head.size()) return std::string();
    return head.substr(offset, length);
  };
  // The head in an allocation of its own and its exact size, so that a read past it is ASan's.
  const std::string first = head.substr(0, img2vm::init::kExecHeadBytes);
  const std::unique_ptr<char[]> exact(new char[first.size()]);
  std::copy(first.begin(), first.end(), exact.get());
  const std::vector<std::string> libs =
      img2vm::init::needed_libraries(std::string_view(exact.get(), first.size()), read_at);
  if (libs.size() > img2vm::init::kMaxNeeded) __builtin_trap();
  for (std::size_t i = 0; i < libs.size(); ++i) {
    const std::string& l = libs[i];
    if (l.empty() || l == "." || l == ".." || l.find('/') != std::string::npos ||
        l.find('\0') != std::string::npos || head.find(l) == std::string::npos ||
        std::count(libs.begin(), libs.end(), l) != 1)
      __builtin_trap();
  }
  // DT_RPATH and DT_RUNPATH: each empty or a string of the bytes, at most kMaxSearchPath, no NUL;
  // the directories made of it absolute, normalized, without tokens, at most kMaxSearchDirs.
  const img2vm::init::DynamicNeeds d =
      img2vm::init::dynamic_needs(std::string_view(exact.get(), first.size()), read_at);
  if (d.needed != libs) __builtin_trap();
  for (const std::string* p : {&d.rpath, &d.runpath}) {
    if (p->size() > img2vm::init::kMaxSearchPath || p->find('\0') != std::string::npos ||
        (!p->empty() && head.find(*p) == std::string::npos))
      __builtin_trap();
    const std::vector<std::string> dirs = img2vm::init::search_path_dirs(*p, "/app/bin/prog");
    if (img2vm::init::search_path_dirs(*p, "/$ORIGIN/${ORIGIN}/prog").size() >
        img2vm::init::kMaxSearchDirs)
      __builtin_trap();
    if (dirs.size() > img2vm::init::kMaxSearchDirs) __builtin_trap();
    for (const std::string& dir : dirs)
      if (dir.empty() || dir.front() != '/' || dir.find('$') != std::string::npos ||
          dir.find("/../") != std::string::npos || dir.ends_with("/..") ||
          (dir.size() > 1 && dir.back() == '/') || std::count(dirs.begin(), dirs.end(), dir) != 1)
        __builtin_trap();
  }
  return 0;
}
