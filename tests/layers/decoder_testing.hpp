// For the decompressor suites (GzipReader, ZstdReader): inputs that look like a file system's
// bytes, and reading a decoder to its end.
#pragma once

#include <cstddef>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

namespace img2vm::testing {

// Text-like (compressible) and random (stored/incompressible) stretches, n bytes in all; the
// same for the same seed.
inline std::string sample_data(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::string s;
  s.reserve(n);
  static const char* words[] = {"usr",     "lib", "share", "doc", "x86_64-linux-gnu",
                                "python3", "/",   ".so.",  "\n"};
  while (s.size() < n) {
    if (rng() % 4 == 0) {
      for (int i = 0; i < 2000 && s.size() < n; ++i) s.push_back(static_cast<char>(rng()));
    } else {
      for (int i = 0; i < 400 && s.size() < n; ++i) s += words[rng() % 9];
    }
  }
  s.resize(n);
  return s;
}

// Reads `r` to its end, asking for `out_chunk` bytes at a time.
template <class Reader>
std::string read_to_end(Reader& r, size_t out_chunk) {
  std::string out;
  std::vector<char> buf(out_chunk);
  while (size_t n = r.read(buf.data(), buf.size())) out.append(buf.data(), n);
  return out;
}

}  // namespace img2vm::testing
