// A file's first bytes in an image are the image author's: before the snapshot point the guest
// init reads its program's "#!" line or ELF program headers to find the interpreter it goes
// through (init/warm.hpp). Whatever the bytes, nothing is read outside them, and what comes back
// is empty or an absolute path without NUL bytes found in them.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "img2vm/init/warm.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string head(reinterpret_cast<const char*>(data), size);  // exactly its own bytes
  const std::string got = img2vm::init::interpreter_of(head);
  if (got.empty()) return 0;
  if (got.front() != '/' || got.find('\0') != std::string::npos ||
      head.find(got) == std::string::npos)
    __builtin_trap();
  return 0;
}
