#include "token_server.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <nlohmann/json.hpp>

#include "img2vm/base/ascii.hpp"
#include "img2vm/base/error.hpp"

namespace img2vm::testing {

using nlohmann::json;

namespace {

std::string url_decode(std::string_view s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '+') {
      out += ' ';
    } else if (s[i] == '%' && i + 2 < s.size()) {
      out += static_cast<char>(std::stoi(std::string(s.substr(i + 1, 2)), nullptr, 16));
      i += 2;
    } else {
      out += s[i];
    }
  }
  return out;
}

std::multimap<std::string, std::string> parse_form(std::string_view q) {
  std::multimap<std::string, std::string> out;
  while (!q.empty()) {
    size_t amp = q.find('&');
    std::string_view kv = q.substr(0, amp);
    size_t eq = kv.find('=');
    out.emplace(url_decode(kv.substr(0, eq)),
                eq == std::string_view::npos ? "" : url_decode(kv.substr(eq + 1)));
    if (amp == std::string_view::npos) break;
    q.remove_prefix(amp + 1);
  }
  return out;
}

std::string b64decode(std::string_view in) {
  std::string out;
  unsigned val = 0;
  int bits = -8;
  for (char c : in) {
    int d;
    if (c >= 'A' && c <= 'Z')
      d = c - 'A';
    else if (c >= 'a' && c <= 'z')
      d = c - 'a' + 26;
    else if (c >= '0' && c <= '9')
      d = c - '0' + 52;
    else if (c == '+')
      d = 62;
    else if (c == '/')
      d = 63;
    else
      break;
    val = (val << 6) | static_cast<unsigned>(d);
    bits += 6;
    if (bits >= 0) {
      out += static_cast<char>((val >> bits) & 0xff);
      bits -= 8;
    }
  }
  return out;
}

void send_all(int fd, const std::string& s) {
  size_t off = 0;
  while (off < s.size()) {
    ssize_t n = ::send(fd, s.data() + off, s.size() - off, MSG_NOSIGNAL);
    if (n <= 0) return;
    off += static_cast<size_t>(n);
  }
}

void respond(int fd, int status, const std::string& body, const std::string& extra_headers = "") {
  const char* reason = status == 200 ? "OK" : status == 401 ? "Unauthorized" : "Bad Request";
  std::string r = "HTTP/1.1 " + std::to_string(status) + " " + reason +
                  "\r\nContent-Type: application/json\r\n" + extra_headers +
                  "Content-Length: " + std::to_string(body.size()) +
                  "\r\nConnection: close\r\n\r\n" + body;
  send_all(fd, r);
}

}  // namespace

TokenServer::TokenServer(std::string service, std::string issuer,
                         std::map<std::string, std::string> users,
                         std::set<std::string> public_repos)
    : service_(std::move(service)),
      issuer_(std::move(issuer)),
      users_(std::move(users)),
      public_repos_(std::move(public_repos)) {
  listen_ = UniqueFd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!listen_) throw_errno("token server: socket");
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::bind(listen_.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0)
    throw_errno("token server: bind");
  if (::listen(listen_.get(), 64) != 0) throw_errno("token server: listen");
  socklen_t len = sizeof addr;
  ::getsockname(listen_.get(), reinterpret_cast<sockaddr*>(&addr), &len);
  port_ = ntohs(addr.sin_port);
  int p[2];
  if (::pipe2(p, O_CLOEXEC) != 0) throw_errno("token server: pipe");
  stop_r_.reset(p[0]);
  stop_w_.reset(p[1]);
  thread_ = std::thread([this] { serve(); });
}

TokenServer::~TokenServer() {
  [[maybe_unused]] ssize_t n = ::write(stop_w_.get(), "x", 1);
  if (thread_.joinable()) thread_.join();
}

std::string TokenServer::realm() const {
  return "http://127.0.0.1:" + std::to_string(port_) + "/token";
}

std::vector<TokenServer::Request> TokenServer::requests() const {
  std::lock_guard<std::mutex> lock(mu_);
  return requests_;
}

void TokenServer::serve() {
  for (;;) {
    pollfd fds[2] = {{listen_.get(), POLLIN, 0}, {stop_r_.get(), POLLIN, 0}};
    if (::poll(fds, 2, -1) < 0) continue;
    if (fds[1].revents) return;
    if (!(fds[0].revents & POLLIN)) continue;
    UniqueFd c(::accept4(listen_.get(), nullptr, nullptr, SOCK_CLOEXEC));
    if (!c) continue;
    timeval tv{5, 0};
    ::setsockopt(c.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    handle(c.get());
  }
}

void TokenServer::handle(int fd) {
  std::string req;
  char buf[8192];
  size_t header_end;
  while ((header_end = req.find("\r\n\r\n")) == std::string::npos) {
    ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n <= 0 || req.size() > (1 << 20)) return;
    req.append(buf, static_cast<size_t>(n));
  }
  std::string head = req.substr(0, header_end);
  std::string body = req.substr(header_end + 4);
  std::map<std::string, std::string> headers;
  size_t line_end = head.find("\r\n");
  std::string request_line = head.substr(0, line_end);
  for (size_t pos = line_end; pos != std::string::npos && pos < head.size();) {
    size_t next = head.find("\r\n", pos + 2);
    std::string line =
        head.substr(pos + 2, next == std::string::npos ? std::string::npos : next - pos - 2);
    size_t colon = line.find(':');
    if (colon != std::string::npos) {
      std::string k = ascii_lower(line.substr(0, colon));
      std::string v = line.substr(colon + 1);
      v.erase(0, v.find_first_not_of(" \t"));
      headers[k] = v;
    }
    pos = next;
  }
  if (auto it = headers.find("content-length"); it != headers.end()) {
    size_t want = std::stoul(it->second);
    while (body.size() < want) {
      ssize_t n = ::recv(fd, buf, sizeof buf, 0);
      if (n <= 0) return;
      body.append(buf, static_cast<size_t>(n));
    }
  }

  Request rec;
  rec.method = request_line.substr(0, request_line.find(' '));
  std::string target = request_line.substr(rec.method.size() + 1);
  target = target.substr(0, target.find(' '));
  std::string path = target.substr(0, target.find('?'));
  auto q = target.find('?') == std::string::npos
               ? std::multimap<std::string, std::string>{}
               : parse_form(std::string_view(target).substr(target.find('?') + 1));
  if (rec.method == "POST") q = parse_form(body);

  auto finish = [&](int status, const std::string& out, const std::string& extra = "") {
    rec.status = status;
    {
      std::lock_guard<std::mutex> lock(mu_);
      requests_.push_back(rec);
    }
    respond(fd, status, out, extra);
  };
  if (path != "/token") return finish(400, R"({"error":"unknown path"})");

  for (auto [it, end] = q.equal_range("scope"); it != end; ++it) {
    // Several scopes may also come space-separated in one parameter.
    std::string s = it->second;
    size_t start = 0;
    while (start < s.size()) {
      size_t sp = s.find(' ', start);
      if (sp == std::string::npos) sp = s.size();
      if (sp > start) rec.scopes.push_back(s.substr(start, sp - start));
      start = sp + 1;
    }
  }
  if (auto it = q.find("service"); it != q.end()) rec.service = it->second;

  std::string user, pass;
  bool have_creds = false;
  if (rec.method == "POST") {
    auto gt = q.find("grant_type");
    if (gt != q.end() && gt->second == "password") {
      user = q.count("username") ? q.find("username")->second : "";
      pass = q.count("password") ? q.find("password")->second : "";
      have_creds = true;
    }
  } else if (auto it = headers.find("authorization");
             it != headers.end() && it->second.rfind("Basic ", 0) == 0) {
    std::string dec = b64decode(it->second.substr(6));
    auto colon = dec.find(':');
    user = dec.substr(0, colon);
    pass = colon == std::string::npos ? "" : dec.substr(colon + 1);
    have_creds = true;
  }
  rec.user = user;
  if (rec.service != service_) return finish(400, R"({"error":"unknown service"})");
  if (have_creds) {
    auto u = users_.find(user);
    if (u == users_.end() || u->second != pass)
      return finish(401, R"({"errors":[{"code":"UNAUTHORIZED","message":"invalid credentials"}]})",
                    "WWW-Authenticate: Basic realm=\"img2vm-test-token\"\r\n");
  }
  std::string token = issue(have_creds ? user : "", rec.scopes, have_creds);
  auto now = std::chrono::system_clock::now();
  std::time_t t = std::chrono::system_clock::to_time_t(now);
  char issued[64];
  std::strftime(issued, sizeof issued, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&t));
  json out = {{"token", token},
              {"access_token", token},
              {"expires_in", token_lifetime_seconds},
              {"issued_at", issued}};
  finish(200, out.dump());
}

std::string TokenServer::issue(const std::string& subject, const std::vector<std::string>& scopes,
                               bool authenticated) {
  json access = json::array();
  for (const auto& s : scopes) {
    // type:name:actions, where name may itself contain ':' only in theory; split at the ends.
    auto first = s.find(':'), last = s.rfind(':');
    if (first == std::string::npos || first == last) continue;
    std::string type = s.substr(0, first), name = s.substr(first + 1, last - first - 1);
    json actions = json::array();
    std::string acts = s.substr(last + 1);
    size_t start = 0;
    while (start <= acts.size()) {
      size_t comma = acts.find(',', start);
      if (comma == std::string::npos) comma = acts.size();
      std::string a = acts.substr(start, comma - start);
      bool allowed =
          authenticated || (type == "repository" && a == "pull" && public_repos_.count(name));
      if (!a.empty() && allowed) actions.push_back(a);
      start = comma + 1;
    }
    access.push_back({{"type", type}, {"name", name}, {"actions", actions}});
  }
  auto now = std::chrono::duration_cast<std::chrono::seconds>(
                 std::chrono::system_clock::now().time_since_epoch())
                 .count();
  static std::atomic<unsigned> counter{0};
  json header = {{"alg", "RS256"}, {"typ", "JWT"}, {"x5c", json::array({base64(key_.cert_der())})}};
  json claims = {{"iss", issuer_},
                 {"sub", subject},
                 {"aud", service_},
                 {"exp", now + token_lifetime_seconds},
                 {"nbf", now - 10},
                 {"iat", now},
                 {"jti", "img2vm-test-" + std::to_string(counter++)},
                 {"access", access}};
  std::string signing_input = base64url(header.dump()) + "." + base64url(claims.dump());
  return signing_input + "." + base64url(key_.sign_rs256(signing_input));
}

}  // namespace img2vm::testing
