#include "fault_proxy.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>
#include <optional>
#include <thread>

#include "img2vm/base/ascii.hpp"
#include "img2vm/base/error.hpp"

namespace img2vm::testing {

namespace {

void send_all(int fd, const std::string& s) {
  size_t off = 0;
  while (off < s.size()) {
    ssize_t n = ::send(fd, s.data() + off, s.size() - off, MSG_NOSIGNAL);
    if (n <= 0) return;
    off += static_cast<size_t>(n);
  }
}

}  // namespace

FaultProxy::FaultProxy(std::string upstream_host, int upstream_port)
    : upstream_host_(std::move(upstream_host)), upstream_port_(upstream_port) {}

void FaultProxy::script(std::vector<Fault> faults, size_t truncate_after) {
  std::lock_guard l(mu_);
  faults_.assign(faults.begin(), faults.end());
  truncate_after_ = truncate_after;
}

std::vector<FaultProxy::Seen> FaultProxy::blob_requests() const {
  std::lock_guard l(mu_);
  return seen_;
}

void FaultProxy::handle(int fd) {
  std::string req;
  char buf[65536];
  while (req.find("\r\n\r\n") == std::string::npos) {
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, 5000) <= 0) return;
    ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n <= 0) return;
    req.append(buf, static_cast<size_t>(n));
    // Not HTTP (a TLS ClientHello): hang up, as a plain-HTTP server would.
    if (!std::isalpha(static_cast<unsigned char>(req[0]))) return;
    if (req.size() > 65536) return;
  }
  size_t eol = req.find("\r\n");
  std::string line = req.substr(0, eol);
  std::string path = line.substr(line.find(' ') + 1);
  path = path.substr(0, path.find(' '));
  // Rewrite headers: one request per connection.
  std::vector<std::string> headers;
  std::string range;
  size_t pos = eol + 2;
  while (pos < req.size()) {
    size_t e = req.find("\r\n", pos);
    std::string h = req.substr(pos, e - pos);
    pos = e + 2;
    if (h.empty()) break;
    std::string name = ascii_lower(h.substr(0, h.find(':')));
    if (name == "connection") continue;
    if (name == "range") {
      range = h.substr(h.find(':') + 2);
      continue;
    }
    headers.push_back(h);
  }
  std::optional<Fault> fault;
  size_t cut = 0;
  if (path.find("/blobs/") != std::string::npos) {
    std::lock_guard l(mu_);
    seen_.push_back({path, range});
    if (!faults_.empty()) {
      fault = faults_.front();
      faults_.pop_front();
    }
    cut = truncate_after_;
  }
  std::string head = line + "\r\n";
  for (const auto& h : headers) head += h + "\r\n";
  if (fault == Fault::kRangePastEnd)
    head += "Range: bytes=999999999-\r\n";
  else if (!range.empty())
    head += "Range: " + range + "\r\n";
  head += "Connection: close\r\n\r\n";
  if (fault == Fault::kReset) {
    linger lg{1, 0};
    ::setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    return;
  }
  if (fault == Fault::k503) {
    send_all(fd,
             "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    return;
  }
  if (fault == Fault::k429) {
    send_all(
        fd,
        "HTTP/1.1 429 Too Many Requests\r\nRetry-After: 1\r\nContent-Type: application/json\r\n"
        "Content-Length: 60\r\nConnection: close\r\n\r\n"
        "{\"errors\":[{\"code\":\"TOOMANYREQUESTS\",\"message\":\"slow down\"}]}");
    return;
  }
  UniqueFd up(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(upstream_port_));
  ::inet_pton(AF_INET, upstream_host_.c_str(), &a.sin_addr);
  if (::connect(up.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) return;
  send_all(up.get(), head);
  size_t sent = 0;
  for (;;) {
    if (fault == Fault::kSlow && sent > 0) {
      if (server_.stopping()) return;
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    ssize_t n = ::recv(up.get(), buf, fault == Fault::kSlow ? 16384 : sizeof buf, 0);
    if (n <= 0) return;
    size_t take = static_cast<size_t>(n);
    if (fault == Fault::kTruncate && sent + take > cut) take = cut - sent;
    send_all(fd, std::string(buf, take));
    sent += take;
    if (fault == Fault::kStall) ++stalls_;
    while (fault == Fault::kStall) {
      if (server_.stopping()) return;
      pollfd p{fd, POLLIN, 0};
      char c;
      if (::poll(&p, 1, 100) > 0 && ::recv(fd, &c, 1, 0) <= 0) return;
    }
    if (fault == Fault::kTruncate && sent >= cut) return;
  }
}

}  // namespace img2vm::testing
