// Streaming gzip (RFC 1952) decoding on isa-l's inflate, several times faster than zlib's.
//
// Members written one after another are decoded in turn, as `gzip -d` does; every member's
// header is parsed (FEXTRA, FNAME, FCOMMENT and FHCRC skipped over) and its trailer checked
// (CRC-32 and length of the output). When a member ends and the bytes after it do not start
// another one, the stream ends there: trailing bytes are not decoded (whoever reads the blob
// still hashes them). Corrupt, truncated or non-gzip input is an Error of kind kIntegrity
// naming `what`.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "img2vm/layers/compression.hpp"

namespace img2vm::layers {

class GzipReader {
 public:
  GzipReader(ReadFn source, std::string what);
  ~GzipReader();
  GzipReader(const GzipReader&) = delete;
  GzipReader& operator=(const GzipReader&) = delete;

  // Up to n decompressed bytes into buf; 0 once the stream has ended.
  size_t read(void* buf, size_t n);

  uint64_t bytes_in() const;   // compressed bytes consumed so far
  uint64_t bytes_out() const;  // decompressed bytes produced so far
  unsigned members() const;    // gzip members started so far

 private:
  struct State;
  std::unique_ptr<State> s_;
};

}  // namespace img2vm::layers
