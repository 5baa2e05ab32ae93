#pragma once
// A byte stream read ahead on a thread of its own, so that producing it (reading a blob,
// verifying its digest, decompressing) overlaps with consuming it (hashing the content, parsing
// the tar, writing the spool): each layer is then decoded by two cores where two are free.

#include <condition_variable>
#include <cstddef>
#include <exception>
#include <memory>
#include <mutex>
#include <string_view>
#include <thread>
#include <vector>

#include "img2vm/layers/compression.hpp"

namespace img2vm::layers {

class Prefetcher {
 public:
  // Starts calling `source` on a new thread, filling up to `depth` chunks of `chunk` bytes
  // ahead of next(). `source` returns 0 at the end of the stream.
  explicit Prefetcher(ReadFn source, size_t chunk = size_t{1} << 18, size_t depth = 4);
  // Stops the thread (a `source` call under way is let finish) and waits for it.
  ~Prefetcher();
  Prefetcher(const Prefetcher&) = delete;
  Prefetcher& operator=(const Prefetcher&) = delete;

  // The next piece of the stream, valid until the next call; empty at its end. What `source`
  // threw is rethrown here, after every byte it produced before throwing.
  std::string_view next();

 private:
  struct Chunk {
    std::unique_ptr<char[]> data;
    size_t len = 0;
  };
  void run();
  void stop();

  ReadFn source_;
  const size_t chunk_size_;
  std::vector<Chunk> ring_;
  std::mutex mu_;
  std::condition_variable cv_;
  size_t head_ = 0;       // the chunk next() hands out next
  size_t filled_ = 0;     // chunks ready from head_ on
  bool holding_ = false;  // next() handed out ring_[head_ - 1] and the reader may still use it
  bool done_ = false;     // the producer will fill no more
  bool stop_ = false;
  std::exception_ptr error_;
  std::thread thread_;  // last: started once the rest is ready
};

}  // namespace img2vm::layers
