// A real docker-registry (CNCF distribution 2.x, Debian's package) for tests, on 127.0.0.1 with
// a free port and its storage in a temporary directory. Three flavours:
//   kNone      plain HTTP, no authentication
//   kBasicTls  HTTPS with a CA made at test time, htpasswd (bcrypt) Basic authentication
//   kToken     plain HTTP, Bearer token authentication against an in-process TokenServer
// The process is stopped when the object is destroyed, and killed if the test process dies.
#pragma once

#include <filesystem>
#include <memory>
#include <ostream>
#include <set>
#include <string>

#include "img2vm/base/fd.hpp"
#include "process.hpp"
#include "token_server.hpp"

namespace img2vm::testing {

enum class RegistryAuth { kNone, kBasicTls, kToken };
const char* to_string(RegistryAuth a);
// So that parameterized test names read "GetParam() = token".
inline void PrintTo(RegistryAuth a, std::ostream* os) { *os << to_string(a); }

struct RegistryOptions {
  RegistryAuth auth = RegistryAuth::kNone;
  std::string username = "img2vm";
  std::string password = "s3cret-Pa55";
  // With kToken: repositories anyone may pull without credentials.
  std::set<std::string> public_repos;
  // With kToken: the realm the registry announces, when not the token server's own (a front
  // that passes the requests on to token_server()->realm()).
  std::string token_realm;
};

class Registry {
 public:
  explicit Registry(RegistryOptions opts = {});
  explicit Registry(RegistryAuth auth)
      : Registry(RegistryOptions{auth, "img2vm", "s3cret-Pa55", {}, {}}) {}
  ~Registry();
  Registry(const Registry&) = delete;
  Registry& operator=(const Registry&) = delete;

  const RegistryOptions& options() const { return opts_; }
  bool tls() const { return opts_.auth == RegistryAuth::kBasicTls; }
  // "127.0.0.1:PORT"
  std::string host() const;
  // "http://127.0.0.1:PORT" or "https://..."
  std::string base_url() const;
  const std::string& username() const { return opts_.username; }
  const std::string& password() const { return opts_.password; }
  // PEM file of the CA that signed the server certificate (kBasicTls only).
  std::filesystem::path ca_cert_file() const { return dir_.path() / "certs" / "ca.crt"; }
  // A directory holding ca.crt, as skopeo's --cert-dir and containers' certs.d expect.
  std::filesystem::path cert_dir() const { return dir_.path() / "certs"; }
  std::filesystem::path storage_dir() const { return dir_.path() / "storage"; }
  std::filesystem::path log_file() const { return dir_.path() / "registry.log"; }
  TokenServer* token_server() const { return token_.get(); }

  // Stops the process (SIGTERM), or kills it (SIGKILL), keeping the storage.
  void stop();
  void kill();
  // Starts it again on the same port with the same storage.
  void start();
  bool running();

 private:
  void write_config();
  void wait_ready();

  RegistryOptions opts_;
  TempDir dir_;
  int port_ = 0;
  std::unique_ptr<TokenServer> token_;
  ChildProcess proc_;
};

// Path of the docker-registry binary, or a failed assertion telling how to install it.
std::string registry_binary();

}  // namespace img2vm::testing
