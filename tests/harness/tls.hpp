// Certificates and keys made at test time with OpenSSL: a throwaway CA, a server certificate
// for 127.0.0.1/localhost signed by it, and an RSA key with a self-signed certificate for
// signing JWTs.
#pragma once

#include <memory>
#include <string>
#include <string_view>

namespace img2vm::testing {

struct TlsMaterial {
  std::string ca_cert_pem;
  std::string server_cert_pem;
  std::string server_key_pem;
};

// A fresh CA and a server certificate with subjectAltName IP:127.0.0.1, DNS:localhost.
TlsMaterial make_tls_material();

// An RSA-2048 key for RS256 and a self-signed certificate for its public half.
class SigningKey {
 public:
  SigningKey();
  ~SigningKey();
  SigningKey(const SigningKey&) = delete;
  SigningKey& operator=(const SigningKey&) = delete;

  const std::string& cert_pem() const { return cert_pem_; }
  const std::string& cert_der() const { return cert_der_; }
  // RSASSA-PKCS1-v1_5 with SHA-256 over data.
  std::string sign_rs256(std::string_view data) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  std::string cert_pem_, cert_der_;
};

std::string base64url(std::string_view data);
std::string base64(std::string_view data);

}  // namespace img2vm::testing
