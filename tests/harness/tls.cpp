#include "tls.hpp"

#include <openssl/bio.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "img2vm/base/error.hpp"

namespace img2vm::testing {

namespace {

[[noreturn]] void ossl_fail(const char* what) {
  throw Error(ErrorKind::kInternal, std::string("OpenSSL: ") + what + " failed");
}

struct PkeyFree {
  void operator()(EVP_PKEY* p) const { EVP_PKEY_free(p); }
};
struct X509Free {
  void operator()(X509* p) const { X509_free(p); }
};
struct BioFree {
  void operator()(BIO* p) const { BIO_free(p); }
};
using Pkey = std::unique_ptr<EVP_PKEY, PkeyFree>;
using Cert = std::unique_ptr<X509, X509Free>;
using Bio = std::unique_ptr<BIO, BioFree>;

std::string bio_string(BIO* b) {
  char* data = nullptr;
  long n = BIO_get_mem_data(b, &data);
  return std::string(data, static_cast<size_t>(n));
}

std::string pem_of_cert(X509* c) {
  Bio b(BIO_new(BIO_s_mem()));
  if (!PEM_write_bio_X509(b.get(), c)) ossl_fail("PEM_write_bio_X509");
  return bio_string(b.get());
}

std::string key_pem(EVP_PKEY* k) {
  Bio b(BIO_new(BIO_s_mem()));
  if (!PEM_write_bio_PrivateKey(b.get(), k, nullptr, nullptr, 0, nullptr, nullptr))
    ossl_fail("PEM_write_bio_PrivateKey");
  return bio_string(b.get());
}

void add_ext(X509* cert, X509* issuer, int nid, const char* value) {
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, issuer, cert, nullptr, nullptr, 0);
  X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, &ctx, nid, value);
  if (!ext) ossl_fail("X509V3_EXT_conf_nid");
  X509_add_ext(cert, ext, -1);
  X509_EXTENSION_free(ext);
}

// A certificate for `key` named `cn`, signed by issuer_key (self-signed when issuer is null).
Cert make_cert(EVP_PKEY* key, const char* cn, X509* issuer, EVP_PKEY* issuer_key, bool is_ca,
               bool server) {
  Cert c(X509_new());
  X509_set_version(c.get(), 2);
  unsigned char serial[16];
  RAND_bytes(serial, sizeof serial);
  serial[0] &= 0x7f;
  BIGNUM* bn = BN_bin2bn(serial, sizeof serial, nullptr);
  BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(c.get()));
  BN_free(bn);
  X509_gmtime_adj(X509_getm_notBefore(c.get()), -3600);
  X509_gmtime_adj(X509_getm_notAfter(c.get()), 7L * 24 * 3600);
  X509_set_pubkey(c.get(), key);
  X509_NAME* name = X509_get_subject_name(c.get());
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, reinterpret_cast<const unsigned char*>(cn),
                             -1, -1, 0);
  X509* iss = issuer ? issuer : c.get();
  X509_set_issuer_name(c.get(), X509_get_subject_name(iss));
  if (is_ca) {
    add_ext(c.get(), iss, NID_basic_constraints, "critical,CA:TRUE");
    add_ext(c.get(), iss, NID_key_usage, "critical,keyCertSign,cRLSign,digitalSignature");
  } else {
    add_ext(c.get(), iss, NID_basic_constraints, "critical,CA:FALSE");
    add_ext(c.get(), iss, NID_key_usage, "critical,digitalSignature,keyEncipherment");
  }
  if (server) {
    add_ext(c.get(), iss, NID_ext_key_usage, "serverAuth");
    add_ext(c.get(), iss, NID_subject_alt_name, "IP:127.0.0.1,DNS:localhost");
  }
  add_ext(c.get(), iss, NID_subject_key_identifier, "hash");
  if (!X509_sign(c.get(), issuer_key ? issuer_key : key, EVP_sha256())) ossl_fail("X509_sign");
  return c;
}

}  // namespace

TlsMaterial make_tls_material() {
  Pkey ca_key(EVP_EC_gen("P-256"));
  Pkey srv_key(EVP_EC_gen("P-256"));
  if (!ca_key || !srv_key) ossl_fail("EVP_EC_gen");
  Cert ca = make_cert(ca_key.get(), "img2vm test CA", nullptr, nullptr, true, false);
  Cert srv = make_cert(srv_key.get(), "127.0.0.1", ca.get(), ca_key.get(), false, true);
  return {pem_of_cert(ca.get()), pem_of_cert(srv.get()), key_pem(srv_key.get())};
}

struct SigningKey::Impl {
  Pkey key;
};

SigningKey::SigningKey() : impl_(std::make_unique<Impl>()) {
  impl_->key.reset(EVP_RSA_gen(2048));
  if (!impl_->key) ossl_fail("EVP_RSA_gen");
  Cert c = make_cert(impl_->key.get(), "img2vm test token issuer", nullptr, nullptr, false, false);
  cert_pem_ = pem_of_cert(c.get());
  unsigned char* der = nullptr;
  int n = i2d_X509(c.get(), &der);
  if (n <= 0) ossl_fail("i2d_X509");
  cert_der_.assign(reinterpret_cast<char*>(der), static_cast<size_t>(n));
  OPENSSL_free(der);
}

SigningKey::~SigningKey() = default;

std::string SigningKey::sign_rs256(std::string_view data) const {
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  std::string sig;
  size_t len = 0;
  bool ok = ctx && EVP_DigestSignInit(ctx, nullptr, EVP_sha256(), nullptr, impl_->key.get()) == 1 &&
            EVP_DigestSign(ctx, nullptr, &len, reinterpret_cast<const unsigned char*>(data.data()),
                           data.size()) == 1;
  if (ok) {
    sig.resize(len);
    ok = EVP_DigestSign(ctx, reinterpret_cast<unsigned char*>(sig.data()), &len,
                        reinterpret_cast<const unsigned char*>(data.data()), data.size()) == 1;
    sig.resize(len);
  }
  EVP_MD_CTX_free(ctx);
  if (!ok) ossl_fail("EVP_DigestSign");
  return sig;
}

std::string base64(std::string_view data) {
  static const char kAlpha[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  size_t i = 0;
  for (; i + 2 < data.size(); i += 3) {
    unsigned v = (static_cast<unsigned char>(data[i]) << 16) |
                 (static_cast<unsigned char>(data[i + 1]) << 8) |
                 static_cast<unsigned char>(data[i + 2]);
    out += kAlpha[v >> 18];
    out += kAlpha[(v >> 12) & 63];
    out += kAlpha[(v >> 6) & 63];
    out += kAlpha[v & 63];
  }
  if (i < data.size()) {
    unsigned v = static_cast<unsigned char>(data[i]) << 16;
    if (i + 1 < data.size()) v |= static_cast<unsigned char>(data[i + 1]) << 8;
    out += kAlpha[v >> 18];
    out += kAlpha[(v >> 12) & 63];
    out += i + 1 < data.size() ? kAlpha[(v >> 6) & 63] : '=';
    out += '=';
  }
  return out;
}

std::string base64url(std::string_view data) {
  std::string s = base64(data);
  while (!s.empty() && s.back() == '=') s.pop_back();
  for (char& c : s) {
    if (c == '+') c = '-';
    if (c == '/') c = '_';
  }
  return s;
}

}  // namespace img2vm::testing
