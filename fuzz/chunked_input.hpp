// For the decompressor fuzz targets: the first input byte picks how the rest is handed over
// (chunk sizes on the way in and out), so that split headers, trailers and frame or member
// boundaries are explored too.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "img2vm/layers/compression.hpp"

namespace img2vm::fuzz {

class ChunkedInput {
 public:
  // `size` must be at least 1.
  ChunkedInput(const uint8_t* data, size_t size)
      : in_chunk_(1 + (data[0] & 0x0f) * (data[0] & 0x0f) * 97),  // 1 .. 21826
        out_chunk_(1 + (data[0] >> 4) * 4099),                    // 1 .. 61486
        data_(data + 1),
        size_(size - 1) {}

  size_t size() const { return size_; }
  // The bytes after the first, from the start, at most in_chunk at a time.
  layers::ReadFn source() {
    pos_ = 0;
    return [this](void* b, size_t n) {
      size_t k = std::min({n, in_chunk_, size_ - pos_});
      std::memcpy(b, data_ + pos_, k);
      pos_ += k;
      return k;
    };
  }
  // Reads `r` to its end, out_chunk bytes at a time (stopping past 64 MiB: a bomb is the
  // reader's caller's business); returns the bytes read.
  template <class Reader>
  uint64_t drain(Reader& r) const {
    std::vector<uint8_t> out(out_chunk_);
    uint64_t total = 0;
    while (size_t n = r.read(out.data(), out.size())) {
      total += n;
      if (total > (64u << 20)) break;
    }
    return total;
  }

 private:
  size_t in_chunk_, out_chunk_;
  const uint8_t* data_;
  size_t size_;
  size_t pos_ = 0;
};

}  // namespace img2vm::fuzz
