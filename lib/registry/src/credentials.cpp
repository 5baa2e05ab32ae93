#include "img2vm/registry/credentials.hpp"

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <nlohmann/json.hpp>

#include "img2vm/base/error.hpp"
#include "img2vm/base/fd.hpp"

extern char** environ;

namespace img2vm::registry {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr std::string_view kB64 =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

// The host part of a config.json key: "https://index.docker.io/v1/" -> "index.docker.io".
std::string key_host(std::string k) {
  if (size_t p = k.find("://"); p != std::string::npos) k = k.substr(p + 3);
  if (size_t s = k.find('/'); s != std::string::npos) k = k.substr(0, s);
  return k;
}

bool is_hub(const std::string& host) {
  return host == "docker.io" || host == "index.docker.io" || host == "registry-1.docker.io";
}

bool same_registry(const std::string& key, const std::string& registry) {
  std::string h = key_host(key);
  return h == registry || (is_hub(registry) && is_hub(h));
}

// What docker passes to helpers for a registry.
std::string server_url(const std::string& registry) {
  return is_hub(registry) ? "https://index.docker.io/v1/" : registry;
}

// Runs docker-credential-NAME get with `input` on stdin; returns its stdout, or nullopt when
// the helper says it has no credentials.
std::optional<Credentials> run_helper(const std::string& name, const std::string& registry) {
  std::string prog = "docker-credential-" + name;
  int in[2], out[2];
  if (::pipe2(in, O_CLOEXEC) != 0 || ::pipe2(out, O_CLOEXEC) != 0) throw_errno("pipe for " + prog);
  UniqueFd in_r(in[0]), in_w(in[1]), out_r(out[0]), out_w(out[1]);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, in_r.get(), 0);
  posix_spawn_file_actions_adddup2(&fa, out_w.get(), 1);
  char* argv[] = {prog.data(), const_cast<char*>("get"), nullptr};
  pid_t pid = -1;
  int rc = ::posix_spawnp(&pid, prog.c_str(), &fa, nullptr, argv, environ);
  posix_spawn_file_actions_destroy(&fa);
  if (rc != 0)
    throw Error(ErrorKind::kAuth, "cannot run credential helper " + prog + " (configured in " +
                                      (docker_config_dir() / "config.json").string() +
                                      "): " + std::strerror(rc));
  in_r.reset();
  out_w.reset();
  std::string url = server_url(registry);
  // The input is tiny; a helper that exits early gives EPIPE, which we ignore.
  struct sigaction ign {
  }, old{};
  ign.sa_handler = SIG_IGN;
  ::sigaction(SIGPIPE, &ign, &old);
  (void)!::write(in_w.get(), url.data(), url.size());
  ::sigaction(SIGPIPE, &old, nullptr);
  in_w.reset();
  std::string output;
  char buf[4096];
  for (;;) {
    ssize_t n = ::read(out_r.get(), buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    output.append(buf, static_cast<size_t>(n));
    if (output.size() > (1u << 20)) break;
  }
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    if (output.find("credentials not found") != std::string::npos) return std::nullopt;
    // Do not echo the output: it could hold a secret.
    throw Error(ErrorKind::kAuth, "credential helper " + prog + " failed for " + registry);
  }
  json j = json::parse(output, nullptr, false);
  if (!j.is_object())
    throw Error(ErrorKind::kAuth,
                "credential helper " + prog + " printed something that is not JSON");
  Credentials c;
  std::string user = j.value("Username", "");
  std::string secret = j.value("Secret", "");
  if (user == "<token>")
    c.identity_token = secret;
  else {
    c.username = user;
    c.password = secret;
  }
  if (c.empty()) return std::nullopt;
  return c;
}

}  // namespace

std::string base64_encode(std::string_view d) {
  std::string o;
  o.reserve((d.size() + 2) / 3 * 4);
  size_t i = 0;
  for (; i + 2 < d.size(); i += 3) {
    uint32_t v = (uint8_t(d[i]) << 16) | (uint8_t(d[i + 1]) << 8) | uint8_t(d[i + 2]);
    for (int s = 18; s >= 0; s -= 6) o.push_back(kB64[(v >> s) & 63]);
  }
  if (i < d.size()) {
    uint32_t v = uint8_t(d[i]) << 16;
    if (i + 1 < d.size()) v |= uint8_t(d[i + 1]) << 8;
    o.push_back(kB64[(v >> 18) & 63]);
    o.push_back(kB64[(v >> 12) & 63]);
    o.push_back(i + 1 < d.size() ? kB64[(v >> 6) & 63] : '=');
    o.push_back('=');
  }
  return o;
}

std::string base64_decode(std::string_view s) {
  std::string o;
  uint32_t acc = 0;
  int bits = 0;
  size_t pad = 0;
  for (char c : s) {
    if (c == '=') {
      ++pad;
      continue;
    }
    if (c == '\n' || c == '\r') continue;
    size_t v = kB64.find(c);
    if (v == std::string_view::npos || pad)
      throw Error(ErrorKind::kInvalidArgument, "invalid base64");
    acc = (acc << 6) | static_cast<uint32_t>(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      o.push_back(static_cast<char>((acc >> bits) & 0xff));
    }
  }
  if (pad > 2) throw Error(ErrorKind::kInvalidArgument, "invalid base64");
  return o;
}

fs::path docker_config_dir() {
  if (const char* d = std::getenv("DOCKER_CONFIG"); d && *d) return d;
  if (const char* h = std::getenv("HOME"); h && *h) return fs::path(h) / ".docker";
  return {};
}

std::optional<Credentials> lookup_docker_credentials(const std::string& registry,
                                                     const fs::path& dir) {
  if (dir.empty()) return std::nullopt;
  fs::path file = dir / "config.json";
  std::error_code ec;
  if (!fs::exists(file, ec)) return std::nullopt;
  json j = json::parse(read_file(file), nullptr, false);
  if (!j.is_object())
    throw Error(ErrorKind::kInvalidArgument, file.string() + " is not valid JSON");
  if (auto h = j.find("credHelpers"); h != j.end() && h->is_object())
    for (auto& [k, v] : h->items())
      if (v.is_string() && same_registry(k, registry))
        return run_helper(v.get<std::string>(), registry);
  if (auto s = j.find("credsStore");
      s != j.end() && s->is_string() && !s->get<std::string>().empty())
    return run_helper(s->get<std::string>(), registry);
  if (auto a = j.find("auths"); a != j.end() && a->is_object()) {
    for (auto& [k, v] : a->items()) {
      if (!v.is_object() || !same_registry(k, registry)) continue;
      Credentials c;
      if (auto t = v.find("identitytoken"); t != v.end() && t->is_string())
        c.identity_token = t->get<std::string>();
      if (auto au = v.find("auth");
          au != v.end() && au->is_string() && !au->get<std::string>().empty()) {
        std::string dec;
        try {
          dec = base64_decode(au->get<std::string>());
        } catch (const Error&) {
          throw Error(ErrorKind::kInvalidArgument,
                      file.string() + ": the \"auth\" entry for " + k + " is not valid base64");
        }
        size_t colon = dec.find(':');
        if (colon == std::string::npos)
          throw Error(ErrorKind::kInvalidArgument,
                      file.string() + ": the \"auth\" entry for " + k + " is not user:password");
        c.username = dec.substr(0, colon);
        c.password = dec.substr(colon + 1);
      } else {
        c.username = v.value("username", "");
        c.password = v.value("password", "");
      }
      if (!c.empty()) return c;
    }
  }
  return std::nullopt;
}

}  // namespace img2vm::registry
