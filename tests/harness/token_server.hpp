// A small Docker-registry token server (the "token authentication" flow of the distribution
// spec) for tests: GET /token?service=..&scope=.. with optional Basic credentials, and the
// OAuth2 form POST, answered with a real RS256 JWT that docker-registry verifies against the
// certificate in its rootcertbundle.
#pragma once

#include <atomic>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "img2vm/base/fd.hpp"
#include "tls.hpp"

namespace img2vm::testing {

class TokenServer {
 public:
  // Users who may push and pull anything; `public_repos` may be pulled anonymously.
  TokenServer(std::string service, std::string issuer, std::map<std::string, std::string> users,
              std::set<std::string> public_repos = {});
  ~TokenServer();
  TokenServer(const TokenServer&) = delete;
  TokenServer& operator=(const TokenServer&) = delete;

  std::string realm() const;  // http://127.0.0.1:PORT/token
  const std::string& service() const { return service_; }
  const std::string& issuer() const { return issuer_; }
  const std::string& cert_pem() const { return key_.cert_pem(); }
  int token_lifetime_seconds = 300;

  struct Request {
    std::string method, user, service;
    std::vector<std::string> scopes;
    int status = 0;
  };
  std::vector<Request> requests() const;

 private:
  void serve();
  void handle(int fd);
  std::string issue(const std::string& subject, const std::vector<std::string>& scopes,
                    bool authenticated);

  std::string service_, issuer_;
  std::map<std::string, std::string> users_;
  std::set<std::string> public_repos_;
  SigningKey key_;
  UniqueFd listen_;
  UniqueFd stop_r_, stop_w_;
  int port_ = 0;
  std::thread thread_;
  mutable std::mutex mu_;
  std::vector<Request> requests_;
};

}  // namespace img2vm::testing
