#include "tls_front.hpp"

#include <openssl/bio.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>

#include "http.hpp"
#include "img2vm/base/ascii.hpp"
#include "img2vm/base/error.hpp"
#include "tls.hpp"

namespace img2vm::testing {

struct TlsFront::Ssl {
  SSL_CTX* ctx = nullptr;
  ~Ssl() { SSL_CTX_free(ctx); }
};

namespace {

// Reads a request head through `recv_some` (bounded, up to 5 s of silence).
template <typename Recv>
bool read_head(Recv recv_some, std::string& head) {
  char buf[4096];
  while (head.find("\r\n\r\n") == std::string::npos) {
    int n = recv_some(buf, static_cast<int>(sizeof buf));
    if (n <= 0 || head.size() > (1u << 20)) return false;
    head.append(buf, static_cast<size_t>(n));
  }
  return true;
}

TlsFront::Request parse_request(const std::string& head, bool tls) {
  TlsFront::Request r;
  r.tls = tls;
  size_t eol = head.find("\r\n");
  std::string line = head.substr(0, eol);
  r.method = line.substr(0, line.find(' '));
  std::string rest = line.substr(r.method.size() + 1);
  r.target = rest.substr(0, rest.find(' '));
  for (size_t pos = eol + 2; pos < head.size();) {
    size_t e = head.find("\r\n", pos);
    std::string h = head.substr(pos, e - pos);
    pos = e + 2;
    if (h.empty()) break;
    size_t c = h.find(':');
    if (c == std::string::npos) continue;
    std::string name = ascii_lower(h.substr(0, c));
    size_t v = h.find_first_not_of(' ', c + 1);
    r.headers[name] = v == std::string::npos ? "" : h.substr(v);
  }
  return r;
}

std::string render(const TlsFront::Response& r) {
  std::string s = "HTTP/1.1 " + std::to_string(r.status) + " Scripted\r\n";
  for (const auto& h : r.headers) s += h + "\r\n";
  s +=
      "Content-Length: " + std::to_string(r.body.size()) + "\r\nConnection: close\r\n\r\n" + r.body;
  return s;
}

bool wait_readable(int fd) {
  pollfd p{fd, POLLIN, 0};
  return ::poll(&p, 1, 5000) > 0;
}

}  // namespace

TlsFront::TlsFront(Handler handler)
    : handler_(std::move(handler)), dir_("tls-front"), ssl_(std::make_unique<Ssl>()) {
  TlsMaterial m = make_tls_material();
  write_file_atomic(ca_cert_file(), m.ca_cert_pem);
  ssl_->ctx = SSL_CTX_new(TLS_server_method());
  if (!ssl_->ctx) throw Error(ErrorKind::kInternal, "SSL_CTX_new failed");
  BIO* cb = BIO_new_mem_buf(m.server_cert_pem.data(), static_cast<int>(m.server_cert_pem.size()));
  X509* cert = PEM_read_bio_X509(cb, nullptr, nullptr, nullptr);
  BIO_free(cb);
  BIO* kb = BIO_new_mem_buf(m.server_key_pem.data(), static_cast<int>(m.server_key_pem.size()));
  EVP_PKEY* key = PEM_read_bio_PrivateKey(kb, nullptr, nullptr, nullptr);
  BIO_free(kb);
  bool ok = cert && key && SSL_CTX_use_certificate(ssl_->ctx, cert) == 1 &&
            SSL_CTX_use_PrivateKey(ssl_->ctx, key) == 1;
  X509_free(cert);
  EVP_PKEY_free(key);
  if (!ok) throw Error(ErrorKind::kInternal, "cannot load the test server certificate");
}

TlsFront::~TlsFront() = default;

std::vector<TlsFront::Request> TlsFront::requests() const {
  std::lock_guard l(mu_);
  return requests_;
}

void TlsFront::handle(int fd) {
  unsigned char first = 0;
  if (!wait_readable(fd) || ::recv(fd, &first, 1, MSG_PEEK) != 1) return;
  std::string head;
  if (first == 0x16) {  // a TLS handshake record
    SSL* s = SSL_new(ssl_->ctx);
    SSL_set_fd(s, fd);
    struct Free {
      SSL* s;
      ~Free() { SSL_free(s); }
    } free_ssl{s};
    timeval tv{5, 0};
    ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    if (SSL_accept(s) != 1) return;
    if (!read_head([&](char* b, int n) { return SSL_read(s, b, n); }, head)) return;
    Request req = parse_request(head, true);
    {
      std::lock_guard l(mu_);
      requests_.push_back(req);
    }
    std::string out = render(handler_(req));
    SSL_write(s, out.data(), static_cast<int>(out.size()));
    SSL_shutdown(s);
    return;
  }
  if (!read_head(
          [&](char* b, int n) {
            return wait_readable(fd) ? static_cast<int>(::recv(fd, b, static_cast<size_t>(n), 0))
                                     : -1;
          },
          head))
    return;
  Request req = parse_request(head, false);
  {
    std::lock_guard l(mu_);
    requests_.push_back(req);
  }
  std::string out = render(handler_(req));
  for (size_t off = 0; off < out.size();) {
    ssize_t n = ::send(fd, out.data() + off, out.size() - off, MSG_NOSIGNAL);
    if (n <= 0) return;
    off += static_cast<size_t>(n);
  }
}

TlsFront::Response TlsFront::forward(const Request& req, const std::string& base_url,
                                     const std::string& ca_file) {
  HttpOptions o;
  o.ca_file = ca_file;
  for (const char* h : {"authorization", "accept"})
    if (auto it = req.headers.find(h); it != req.headers.end())
      o.headers.push_back(std::string(h) + ": " + it->second);
  HttpResponse r = http_request(req.method, base_url + req.target, o);
  Response out;
  out.status = r.status ? static_cast<int>(r.status) : 502;
  for (const char* h : {"content-type", "docker-content-digest", "www-authenticate", "location"})
    if (auto it = r.headers.find(h); it != r.headers.end())
      out.headers.push_back(std::string(h) + ": " + it->second);
  out.body = r.body;
  return out;
}

}  // namespace img2vm::testing
