#include "loopback_server.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>

#include "img2vm/base/error.hpp"

namespace img2vm::testing {

LoopbackServer::LoopbackServer(std::function<void(int)> handle) : handle_(std::move(handle)) {
  listen_ = UniqueFd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!listen_) throw_errno("socket");
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::bind(listen_.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) != 0)
    throw_errno("bind 127.0.0.1");
  socklen_t len = sizeof a;
  ::getsockname(listen_.get(), reinterpret_cast<sockaddr*>(&a), &len);
  port_ = ntohs(a.sin_port);
  if (::listen(listen_.get(), 64) != 0) throw_errno("listen on 127.0.0.1");
  thread_ = std::thread([this] {
    while (!stop_) {
      pollfd p{listen_.get(), POLLIN, 0};
      if (::poll(&p, 1, 100) <= 0) continue;
      int c = ::accept4(listen_.get(), nullptr, nullptr, SOCK_CLOEXEC);
      if (c < 0) continue;
      workers_.emplace_back([this, c] {
        UniqueFd conn(c);
        handle_(c);
      });
    }
  });
}

LoopbackServer::~LoopbackServer() {
  stop_ = true;
  thread_.join();
  for (auto& w : workers_) w.join();
}

}  // namespace img2vm::testing
