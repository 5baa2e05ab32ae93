#include "registry.hpp"

#include <arpa/inet.h>
#include <crypt.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <random>
#include <thread>

#include "http.hpp"
#include "img2vm/base/error.hpp"
#include "tls.hpp"

namespace img2vm::testing {

namespace fs = std::filesystem;
using namespace std::chrono;

const char* to_string(RegistryAuth a) {
  switch (a) {
    case RegistryAuth::kNone:
      return "none";
    case RegistryAuth::kBasicTls:
      return "basic-tls";
    case RegistryAuth::kToken:
      return "token";
  }
  return "?";
}

std::string registry_binary() {
  for (const char* name : {"docker-registry", "registry"}) {
    std::string p = find_program(name);
    if (!p.empty()) return p;
  }
  throw Error(
      ErrorKind::kNotFound,
      "docker-registry is not installed: run scripts/setup.sh (Debian package docker-registry)");
}

namespace {

// A bcrypt htpasswd line (the registry accepts only bcrypt).
std::string htpasswd_line(const std::string& user, const std::string& pass) {
  char rnd[16];
  std::random_device rd;
  for (char& c : rnd) c = static_cast<char>(rd());
  char setting[CRYPT_GENSALT_OUTPUT_SIZE];
  if (!crypt_gensalt_rn("$2b$", 5, rnd, sizeof rnd, setting, sizeof setting))
    throw Error(ErrorKind::kInternal, "crypt_gensalt_rn(bcrypt) failed");
  crypt_data data{};
  const char* hash = crypt_r(pass.c_str(), setting, &data);
  if (!hash || hash[0] == '*') throw Error(ErrorKind::kInternal, "crypt_r(bcrypt) failed");
  return user + ":" + hash + "\n";
}

}  // namespace

Registry::Registry(RegistryOptions opts) : opts_(std::move(opts)), dir_("img2vm-registry") {
  fs::create_directories(storage_dir());
  fs::create_directories(cert_dir());
  if (opts_.auth == RegistryAuth::kBasicTls) {
    TlsMaterial t = make_tls_material();
    write_file_atomic(cert_dir() / "ca.crt", t.ca_cert_pem);
    write_file_atomic(dir_.path() / "server.crt", t.server_cert_pem);
    write_file_atomic(dir_.path() / "server.key", t.server_key_pem, 0600);
    write_file_atomic(dir_.path() / "htpasswd", htpasswd_line(opts_.username, opts_.password));
  } else if (opts_.auth == RegistryAuth::kToken) {
    token_ = std::make_unique<TokenServer>(
        "img2vm-test-registry", "img2vm-test-issuer",
        std::map<std::string, std::string>{{opts_.username, opts_.password}}, opts_.public_repos);
    write_file_atomic(dir_.path() / "token.crt", token_->cert_pem());
  }
  // The port is free when we ask; another process may take it before the registry binds it,
  // so a failed start is retried on a new port.
  for (int attempt = 0;; ++attempt) {
    port_ = free_loopback_port();
    write_config();
    try {
      start();
      return;
    } catch (const Error&) {
      if (attempt >= 3) throw;
    }
  }
}

Registry::~Registry() { proc_.stop(); }

std::string Registry::host() const { return "127.0.0.1:" + std::to_string(port_); }
std::string Registry::base_url() const { return (tls() ? "https://" : "http://") + host(); }

void Registry::write_config() {
  std::string d = dir_.path().string();
  std::string y;
  y += "version: 0.1\n";
  y += "log:\n  level: info\n  formatter: text\n  accesslog:\n    disabled: false\n";
  y += "storage:\n  filesystem:\n    rootdirectory: " + storage_dir().string() + "\n";
  y += "  delete:\n    enabled: true\n";
  y += "  maintenance:\n    uploadpurging:\n      enabled: false\n";
  y += "http:\n  addr: 127.0.0.1:" + std::to_string(port_) + "\n  secret: img2vm-test-secret\n";
  y += "  headers:\n    X-Content-Type-Options: [nosniff]\n";
  if (tls()) y += "  tls:\n    certificate: " + d + "/server.crt\n    key: " + d + "/server.key\n";
  if (opts_.auth == RegistryAuth::kBasicTls) {
    y += "auth:\n  htpasswd:\n    realm: img2vm-test\n    path: " + d + "/htpasswd\n";
  } else if (opts_.auth == RegistryAuth::kToken) {
    std::string realm = opts_.token_realm.empty() ? token_->realm() : opts_.token_realm;
    y += "auth:\n  token:\n    realm: " + realm + "\n    service: " + token_->service() +
         "\n    issuer: " + token_->issuer() + "\n    rootcertbundle: " + d + "/token.crt\n";
  }
  y += "health:\n  storagedriver:\n    enabled: false\n";
  write_file_atomic(dir_.path() / "config.yml", y);
}

void Registry::start() {
  if (proc_.running()) return;
  // docker-registry also reads REGISTRY_* variables; keep a developer's own out of the test.
  std::map<std::string, std::string> env;
  proc_ = ChildProcess({registry_binary(), "serve", (dir_.path() / "config.yml").string()},
                       log_file(), env);
  wait_ready();
}

void Registry::wait_ready() {
  auto deadline = steady_clock::now() + seconds(20);
  HttpOptions o;
  if (tls()) o.ca_file = ca_cert_file().string();
  o.timeout_ms = 1000;
  while (steady_clock::now() < deadline) {
    if (!proc_.running()) {
      std::string log;
      try {
        log = read_file(log_file());
      } catch (const Error&) {
      }
      if (log.size() > 2000) log = log.substr(log.size() - 2000);
      throw Error(ErrorKind::kIo, "docker-registry exited with " +
                                      std::to_string(proc_.exit_code()) + " while starting on " +
                                      host() + "; log: " + log);
    }
    HttpResponse r = http_request("GET", base_url() + "/v2/", o);
    if (r.status == 200 || r.status == 401) return;
    std::this_thread::sleep_for(milliseconds(25));
  }
  proc_.kill_now();
  throw Error(ErrorKind::kIo, "docker-registry did not answer /v2/ on " + host() +
                                  " within 20 s; see " + log_file().string());
}

void Registry::stop() { proc_.stop(); }
void Registry::kill() { proc_.kill_now(); }
bool Registry::running() { return proc_.running(); }

}  // namespace img2vm::testing
