// A fault-injecting HTTP proxy for registry tests: listens on 127.0.0.1, forwards each request
// (one per connection, "Connection: close") to a real registry, and applies the next scripted
// fault to requests for blobs: a connection reset, a response cut after N bytes, a 503, or a
// 429 with Retry-After, a slow response (kSlow: 16 KiB every 100 ms), or a stalled one (kStall: the first chunk,
// then nothing until the client hangs up). Records the blob requests it saw (path and Range header).
#pragma once

#include <atomic>
#include <deque>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "img2vm/base/fd.hpp"

namespace img2vm::testing {

class FaultProxy {
 public:
  enum class Fault { kPass, kReset, kTruncate, k503, k429, kSlow, kStall };
  struct Seen {
    std::string path, range;
  };

  FaultProxy(std::string upstream_host, int upstream_port);
  ~FaultProxy();
  FaultProxy(const FaultProxy&) = delete;
  FaultProxy& operator=(const FaultProxy&) = delete;

  std::string host() const { return "127.0.0.1:" + std::to_string(port_); }
  // Faults applied, in order, to the next blob requests; kTruncate cuts after `truncate_after` bytes.
  void script(std::vector<Fault> faults, size_t truncate_after = 100000);
  std::vector<Seen> blob_requests() const;

 private:
  void serve();
  void handle(int fd);

  std::string upstream_host_;
  int upstream_port_;
  UniqueFd listen_;
  int port_ = 0;
  std::atomic<bool> stop_{false};
  std::thread thread_;
  mutable std::mutex mu_;
  std::deque<Fault> faults_;
  size_t truncate_after_ = 0;
  std::vector<Seen> seen_;
  std::vector<std::thread> workers_;
};

}  // namespace img2vm::testing
