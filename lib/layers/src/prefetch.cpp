#include "prefetch.hpp"

#include <utility>

namespace img2vm::layers {

Prefetcher::Prefetcher(ReadFn source, size_t chunk, size_t depth)
    : source_(std::move(source)), chunk_size_(chunk), ring_(depth < 2 ? 2 : depth) {
  for (auto& c : ring_) c.data.reset(new char[chunk_size_]);  // not zeroed: always written first
  thread_ = std::thread([this] { run(); });
}

Prefetcher::~Prefetcher() { stop(); }

void Prefetcher::stop() {
  {
    std::lock_guard lk(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void Prefetcher::run() {
  const size_t n = ring_.size();
  for (size_t slot = 0;; slot = (slot + 1) % n) {
    {
      // A slot is free when it is neither ready nor still held by the reader.
      std::unique_lock lk(mu_);
      cv_.wait(lk, [&] { return stop_ || filled_ + (holding_ ? 1 : 0) < n; });
      if (stop_) return;
    }
    // Only this thread touches ring_[slot] until it is published below.
    Chunk& c = ring_[slot];
    c.len = 0;
    std::exception_ptr err;
    bool end = false;
    try {
      while (c.len < chunk_size_) {
        size_t got = source_(c.data.get() + c.len, chunk_size_ - c.len);
        if (got == 0) {
          end = true;
          break;
        }
        c.len += got;
      }
    } catch (...) {
      err = std::current_exception();
    }
    {
      std::lock_guard lk(mu_);
      if (c.len) ++filled_;
      if (err) error_ = err;
      if (err || end) done_ = true;
    }
    cv_.notify_all();
    if (err || end) return;
  }
}

std::string_view Prefetcher::next() {
  std::unique_lock lk(mu_);
  if (holding_) {
    holding_ = false;
    cv_.notify_all();
  }
  cv_.wait(lk, [&] { return filled_ > 0 || done_; });
  if (filled_ == 0) {
    if (error_) std::rethrow_exception(error_);
    return {};
  }
  const Chunk& c = ring_[head_];
  head_ = (head_ + 1) % ring_.size();
  --filled_;
  holding_ = true;
  return {c.data.get(), c.len};
}

}  // namespace img2vm::layers
