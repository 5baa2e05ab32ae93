// A TCP listener on 127.0.0.1 (a free port) for the registry tests' scripted servers: each
// connection is handed to `handle` on a thread of its own and closed when it returns. The
// destructor stops accepting and joins those threads (handlers poll stopping() in long loops).
// Make it the last member of its owner, so that it starts after and stops before the rest.
#pragma once

#include <atomic>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "img2vm/base/fd.hpp"

namespace img2vm::testing {

class LoopbackServer {
 public:
  explicit LoopbackServer(std::function<void(int fd)> handle);
  ~LoopbackServer();
  LoopbackServer(const LoopbackServer&) = delete;
  LoopbackServer& operator=(const LoopbackServer&) = delete;

  int port() const { return port_; }
  std::string host() const { return "127.0.0.1:" + std::to_string(port_); }
  bool stopping() const { return stop_; }

 private:
  std::function<void(int)> handle_;
  UniqueFd listen_;
  int port_ = 0;
  std::atomic<bool> stop_{false};
  std::vector<std::thread> workers_;
  std::thread thread_;
};

}  // namespace img2vm::testing
