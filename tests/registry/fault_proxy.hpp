// A fault-injecting HTTP proxy for registry tests: listens on 127.0.0.1, forwards each request
// (one per connection, "Connection: close") to a real registry, and applies the next scripted
// fault to requests for blobs: a connection reset, a response cut after N bytes, a 503, or a
// 429 with Retry-After, a slow response (kSlow: 16 KiB every 100 ms), or a stalled one (kStall: the
// first chunk, then nothing until the client hangs up), or the request sent on with its Range moved
// past the end of any blob (kRangePastEnd: the registry's own 416 answer comes back). Records the
// blob requests it saw (path and Range header) and counts the stalls it entered.
#pragma once

#include <atomic>
#include <deque>
#include <mutex>
#include <string>
#include <vector>

#include "loopback_server.hpp"

namespace img2vm::testing {

class FaultProxy {
 public:
  enum class Fault { kPass, kReset, kTruncate, k503, k429, kSlow, kStall, kRangePastEnd };
  struct Seen {
    std::string path, range;
  };

  FaultProxy(std::string upstream_host, int upstream_port);
  FaultProxy(const FaultProxy&) = delete;
  FaultProxy& operator=(const FaultProxy&) = delete;

  std::string host() const { return server_.host(); }
  // Faults applied, in order, to the next blob requests; kTruncate cuts after `truncate_after`
  // bytes.
  void script(std::vector<Fault> faults, size_t truncate_after = 100000);
  std::vector<Seen> blob_requests() const;
  // How many responses are being held by kStall now or were (a condition to wait for).
  int stalls() const { return stalls_; }

 private:
  void handle(int fd);

  std::string upstream_host_;
  int upstream_port_;
  std::atomic<int> stalls_{0};
  mutable std::mutex mu_;
  std::deque<Fault> faults_;
  size_t truncate_after_ = 0;
  std::vector<Seen> seen_;
  LoopbackServer server_{[this](int fd) { handle(fd); }};
};

}  // namespace img2vm::testing
