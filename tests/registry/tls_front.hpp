// A small scripted HTTP server for client-security tests: one port on 127.0.0.1 that answers
// both TLS (a server certificate for 127.0.0.1 from a CA made at test time) and plain HTTP, so
// that https://127.0.0.1:P and http://127.0.0.1:P are the same host and port, as https://host and
// http://host are to a client that forgets the scheme. One request per connection; a handler
// decides each answer (typically: forward to a real registry or token server, or redirect).
// Records every request with its headers.
#pragma once

#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "img2vm/base/fd.hpp"
#include "loopback_server.hpp"

namespace img2vm::testing {

class TlsFront {
 public:
  struct Request {
    bool tls = false;
    std::string method, target;                  // target: path and query
    std::map<std::string, std::string> headers;  // lowercase names
  };
  struct Response {
    int status = 200;
    std::vector<std::string> headers;  // "Name: value"
    std::string body;
  };
  using Handler = std::function<Response(const Request&)>;

  explicit TlsFront(Handler handler);
  ~TlsFront();
  TlsFront(const TlsFront&) = delete;
  TlsFront& operator=(const TlsFront&) = delete;

  std::string host() const { return server_.host(); }
  // PEM file of the CA that signed the server certificate.
  std::filesystem::path ca_cert_file() const { return dir_.path() / "ca.crt"; }
  std::vector<Request> requests() const;

  // Answers `req` by sending it on to `base_url` (e.g. a Registry's base_url()) with its
  // Authorization and Accept headers; `ca_file` trusts an https upstream.
  static Response forward(const Request& req, const std::string& base_url,
                          const std::string& ca_file = "");

 private:
  struct Ssl;
  void handle(int fd);

  Handler handler_;
  TempDir dir_;
  std::unique_ptr<Ssl> ssl_;
  mutable std::mutex mu_;
  std::vector<Request> requests_;
  LoopbackServer server_{[this](int fd) { handle(fd); }};
};

}  // namespace img2vm::testing
