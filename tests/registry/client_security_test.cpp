// Where the registry client sends credentials and when it skips TLS verification, against the
// harness's real docker-registry (Basic over TLS, and Bearer tokens from its token server) with a
// scripted front (tls_front.hpp) that serves TLS and plain HTTP on one port.
#include <gtest/gtest.h>

#include "image_builder.hpp"
#include "img2vm/base/error.hpp"
#include "img2vm/registry/client.hpp"
#include "process.hpp"
#include "registry.hpp"
#include "tls_front.hpp"

using namespace img2vm;
using namespace img2vm::testing;
using namespace img2vm::registry;
namespace fs = std::filesystem;

namespace {

ClientOptions client_options(const Registry& reg) {
  ClientOptions o;
  o.use_docker_config = false;
  o.credentials = Credentials{reg.username(), reg.password(), ""};
  o.backoff_initial = std::chrono::milliseconds(20);
  o.max_attempts = 2;
  return o;
}

Error error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e;
  }
  ADD_FAILURE() << "no error";
  return Error(ErrorKind::kInternal, "no error");
}

// The front's answers: plain http is not this registry (it answers like a TLS port would, so
// that the client's loopback probe goes on to https); over https, a redirect to the same host
// and port over plain http.
TlsFront::Response refuse_plain_http(const TlsFront::Request&) { return {400, {}, "plain http\n"}; }
TlsFront::Response redirect_to_plain_http(const TlsFront::Request& r) {
  auto host = r.headers.find("host");
  return {
      307, {"Location: http://" + (host == r.headers.end() ? "" : host->second) + r.target}, ""};
}

class RedirectToPlainHttp : public ::testing::TestWithParam<RegistryAuth> {};

// The registry (behind the front, over https) redirects a manifest request to plain http on the
// same host and port: the client follows it, but without the Authorization header (Basic
// credentials or a Bearer token) that it sent over https.
TEST_P(RedirectToPlainHttp, TheSameHostOverPlainHttpGetsNoCredentials) {
  Registry reg(GetParam());
  std::string upstream_ca = reg.tls() ? reg.ca_cert_file().string() : "";
  TlsFront front([&](const TlsFront::Request& r) {
    if (!r.tls) return refuse_plain_http(r);
    if (r.target.find("/manifests/") != std::string::npos) return redirect_to_plain_http(r);
    return TlsFront::forward(r, reg.base_url(), upstream_ca);
  });
  ClientOptions o = client_options(reg);
  o.ca_cert = front.ca_cert_file().string();
  Client c(front.host(), o);
  error_of([&] { c.get_manifest("private/app", "v1"); });  // the plain side answers 400

  bool sent_over_tls = false, followed = false;
  for (const auto& r : front.requests()) {
    if (r.target.find("/manifests/") == std::string::npos) continue;
    bool auth = r.headers.count("authorization") > 0;
    if (r.tls) {
      sent_over_tls = sent_over_tls || auth;
    } else {
      followed = true;
      EXPECT_FALSE(auth) << "credentials went over plain http: " << r.headers.at("authorization");
    }
  }
  EXPECT_TRUE(sent_over_tls) << "the manifest request over https carried no credentials";
  EXPECT_TRUE(followed) << "the redirect was not followed";
}

INSTANTIATE_TEST_SUITE_P(Auth, RedirectToPlainHttp,
                         ::testing::Values(RegistryAuth::kBasicTls, RegistryAuth::kToken));

// An OAuth refresh token travels in a POST body, which a redirect would carry along: the realm's
// redirect to plain http on its own host and port is not followed.
TEST(TokenRealmRedirect, ARefreshTokenPostIsNotSentOnOverPlainHttp) {
  TlsFront realm([](const TlsFront::Request& r) {
    return r.tls ? redirect_to_plain_http(r) : refuse_plain_http(r);
  });
  RegistryOptions ro;
  ro.auth = RegistryAuth::kToken;
  ro.token_realm = "https://" + realm.host() + "/token";
  Registry reg(ro);
  ClientOptions o = client_options(reg);
  o.credentials = Credentials{"", "", "a-refresh-token"};
  o.ca_cert = realm.ca_cert_file().string();
  Client c(reg.host(), o);
  Error e = error_of([&] { c.get_manifest("private/app", "v1"); });
  EXPECT_EQ(e.kind(), ErrorKind::kAuth) << e.what();
  ASSERT_FALSE(realm.requests().empty());
  EXPECT_EQ(realm.requests().front().method, "POST");
  for (const auto& r : realm.requests())
    EXPECT_TRUE(r.tls) << "the POST went on over plain http to " << r.target;
}

// --insecure-registry names one host: its token realm on another host keeps TLS verification,
// so Basic credentials never go to a realm whose certificate nobody checked.
TEST(InsecureRegistry, DoesNotTurnOffVerificationForATokenRealmOnAnotherHost) {
  const Registry* registry = nullptr;
  TlsFront realm([&](const TlsFront::Request& r) {
    std::string token_realm = registry->token_server()->realm();  // http://127.0.0.1:T/token
    return TlsFront::forward(r, token_realm.substr(0, token_realm.rfind('/')));
  });
  RegistryOptions ro;
  ro.auth = RegistryAuth::kToken;
  ro.token_realm = "https://" + realm.host() + "/token";
  Registry reg(ro);
  registry = &reg;

  ClientOptions o = client_options(reg);
  o.insecure_registries = {reg.host()};
  Client c(reg.host(), o);
  Error e = error_of([&] { c.get_manifest("private/app", "v1"); });
  EXPECT_EQ(e.kind(), ErrorKind::kNetwork) << e.what();
  EXPECT_NE(std::string(e.what()).find("TLS failure talking to " + realm.host()), std::string::npos)
      << e.what();
  EXPECT_TRUE(realm.requests().empty())
      << "the realm got a request (with the credentials) over unverified TLS";

  // The same through the CLI's --insecure-registry.
  TempDir home("home");
  RunOptions run;
  run.input = reg.password() + "\n";
  run.env["IMG2VM_HOME"] = home.path().string();
  run.env["DOCKER_CONFIG"] = (home.path() / "none").string();
  const char* bin = std::getenv("IMG2VM_BIN");
  auto cli = run_command({bin ? bin : "img2vm", "pull", "--insecure-registry", reg.host(),
                          reg.host() + "/private/app:v1", "-u", reg.username(), "--password-stdin"},
                         run);
  EXPECT_EQ(cli.exit_code, 1) << cli.describe();
  EXPECT_NE(cli.err.find("TLS failure talking to " + realm.host()), std::string::npos) << cli.err;
  EXPECT_TRUE(realm.requests().empty());

  // The realm is fine once trusted (its CA), or itself named insecure: the token is issued and
  // the registry accepts it (the repository is simply not there).
  for (int variant = 0; variant < 2; ++variant) {
    ClientOptions ok = o;
    if (variant == 0)
      ok.ca_cert = realm.ca_cert_file().string();
    else
      ok.insecure_registries.push_back(realm.host());
    Client c2(reg.host(), ok);
    Error nf = error_of([&] { c2.get_manifest("private/app", "v1"); });
    EXPECT_EQ(nf.kind(), ErrorKind::kNotFound) << nf.what();
    EXPECT_NE(std::string(nf.what()).find("unknown repository private/app"), std::string::npos)
        << nf.what();
  }
  ASSERT_FALSE(realm.requests().empty());
  EXPECT_EQ(realm.requests().front().headers.count("authorization"), 1u);
}

// Naming the registry still reaches it over TLS that nobody can verify (its own port).
TEST(InsecureRegistry, StillCoversTheNamedRegistrysOwnTls) {
  Registry reg(RegistryAuth::kBasicTls);
  ClientOptions o = client_options(reg);
  Client strict(reg.host(), o);
  EXPECT_NE(std::string(error_of([&] { strict.ping(); }).what()).find("TLS failure"),
            std::string::npos);
  o.insecure_registries = {reg.host()};
  Client c(reg.host(), o);
  Error nf = error_of([&] { c.get_manifest("private/app", "v1"); });
  EXPECT_EQ(nf.kind(), ErrorKind::kNotFound) << nf.what();
}

}  // namespace
