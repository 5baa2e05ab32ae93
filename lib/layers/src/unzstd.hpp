// Streaming zstd (RFC 8878) decoding on libzstd, for "+zstd" layers: the counterpart of
// GzipReader, so that the layer's decompressed bytes pass through our hands (to be hashed for
// the diff_id and sniffed) rather than disappearing inside libarchive.
//
// Frames written one after another are decoded in turn, as `zstd -d` does; skippable frames are
// skipped, and a frame's content checksum, when it has one, is checked. The input must end
// where a frame ends: trailing bytes that do not start a frame, a truncated frame or an empty
// input are an Error of kind kIntegrity naming `what`. A frame whose window exceeds
// kMaxWindowLog (made with `zstd --long` beyond 128 MiB) is refused the same way, which bounds
// the memory one reader takes.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "img2vm/layers/compression.hpp"

namespace img2vm::layers {

class ZstdReader {
 public:
  static constexpr int kMaxWindowLog = 27;  // 128 MiB, zstd's own default limit

  ZstdReader(ReadFn source, std::string what);
  ~ZstdReader();
  ZstdReader(const ZstdReader&) = delete;
  ZstdReader& operator=(const ZstdReader&) = delete;

  // Up to n decompressed bytes into buf; 0 once the stream has ended.
  size_t read(void* buf, size_t n);

  uint64_t bytes_in() const;   // compressed bytes consumed so far
  uint64_t bytes_out() const;  // decompressed bytes produced so far

 private:
  struct State;
  std::unique_ptr<State> s_;
};

}  // namespace img2vm::layers
