// The registry fixture serves the distribution API for real, in each authentication mode: an
// image pushed by skopeo reads back byte for byte through the /v2/ API, and credentials are
// actually enforced.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "http.hpp"
#include "image_builder.hpp"
#include "registry.hpp"
#include "skopeo.hpp"

using namespace img2vm;
using namespace img2vm::testing;

namespace {

BuiltImage small_image(const std::string& marker) {
  ImageSpec spec;
  spec.layers.push_back(layer({dir("etc"), file("etc/marker", marker + "\n")}));
  spec.layers.push_back(
      layer({file("hello.txt", "hello from layer two\n", 0600)}, LayerCompression::kZstd));
  spec.config.cmd = {"/bin/sh"};
  return build_image(spec);
}

class RegistryAuthModes : public ::testing::TestWithParam<RegistryAuth> {};

TEST_P(RegistryAuthModes, PushWithSkopeoAndReadManifestBack) {
  Registry reg(GetParam());
  TempDir layout("layout");
  BuiltImage img = small_image(to_string(GetParam()));
  write_oci_layout(layout.path(), {{"v1", img}});
  skopeo_push("oci:" + layout.path().string() + ":v1", reg, "test/app:v1");

  // skopeo reads it back unchanged.
  EXPECT_EQ(skopeo_inspect_raw(reg, "test/app:v1"), img.manifest.data);

  // And so does a plain HTTP client doing the auth dance itself, by tag and by digest.
  std::string ca = reg.tls() ? reg.ca_cert_file().string() : "";
  for (const std::string& ref : {std::string("v1"), img.manifest.digest.str()}) {
    HttpResponse r =
        get_manifest(reg.base_url(), "test/app", ref, reg.username(), reg.password(), ca);
    ASSERT_EQ(r.status, 200) << ref << ": " << r.error << r.body;
    EXPECT_EQ(r.body, img.manifest.data);
    EXPECT_EQ(r.headers["docker-content-digest"], img.manifest.digest.str());
    EXPECT_EQ(r.headers["content-type"], img.manifest.media_type);
  }
}

TEST_P(RegistryAuthModes, CredentialsAreEnforced) {
  Registry reg(GetParam());
  TempDir layout("layout");
  BuiltImage img = small_image("enforced");
  write_oci_layout(layout.path(), {{"v1", img}});
  skopeo_push("oci:" + layout.path().string() + ":v1", reg, "private/app:v1");
  std::string ca = reg.tls() ? reg.ca_cert_file().string() : "";

  HttpOptions anon;
  anon.ca_file = ca;
  HttpResponse ping = http_request("GET", reg.base_url() + "/v2/", anon);
  if (GetParam() == RegistryAuth::kNone) {
    EXPECT_EQ(ping.status, 200);
    return;
  }
  ASSERT_EQ(ping.status, 401) << ping.error;
  Challenge ch = parse_challenge(ping.headers["www-authenticate"]);
  if (GetParam() == RegistryAuth::kBasicTls) {
    EXPECT_EQ(ch.scheme, "basic");
    EXPECT_EQ(ch.params["realm"], "img2vm-test");
  } else {
    EXPECT_EQ(ch.scheme, "bearer");
    EXPECT_EQ(ch.params["realm"], reg.token_server()->realm());
    EXPECT_EQ(ch.params["service"], "img2vm-test-registry");
  }

  HttpResponse wrong =
      get_manifest(reg.base_url(), "private/app", "v1", reg.username(), "wrong-password", ca);
  EXPECT_EQ(wrong.status, 401);
  HttpResponse right =
      get_manifest(reg.base_url(), "private/app", "v1", reg.username(), reg.password(), ca);
  EXPECT_EQ(right.status, 200);

  if (GetParam() == RegistryAuth::kToken) {
    // Anonymous tokens carry no access to a private repository: the registry refuses them.
    HttpResponse anon_pull = get_manifest(reg.base_url(), "private/app", "v1", "", "", ca);
    EXPECT_EQ(anon_pull.status, 401);
    // The token server saw the scope a client asks for.
    bool saw_scope = false;
    for (const auto& r : reg.token_server()->requests())
      for (const auto& s : r.scopes) saw_scope |= s == "repository:private/app:pull";
    EXPECT_TRUE(saw_scope);
  }
}

INSTANTIATE_TEST_SUITE_P(Auth, RegistryAuthModes,
                         ::testing::Values(RegistryAuth::kNone, RegistryAuth::kBasicTls,
                                           RegistryAuth::kToken),
                         [](const auto& p) {
                           std::string n = to_string(p.param);
                           for (char& c : n)
                             if (c == '-') c = '_';
                           return n;
                         });

TEST(RegistryFixture, TokenModeAllowsAnonymousPullOfPublicRepos) {
  RegistryOptions opts;
  opts.auth = RegistryAuth::kToken;
  opts.public_repos = {"library/public"};
  Registry reg(opts);
  TempDir layout("layout");
  BuiltImage img = small_image("public");
  write_oci_layout(layout.path(), {{"latest", img}});
  skopeo_push("oci:" + layout.path().string() + ":latest", reg, "library/public:latest");
  HttpResponse r = get_manifest(reg.base_url(), "library/public", "latest", "", "");
  EXPECT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.body, img.manifest.data);
}

TEST(RegistryFixture, TlsIsVerifiedAgainstTheTestCa) {
  Registry reg(RegistryAuth::kBasicTls);
  HttpOptions untrusted;  // the system trust store does not know our CA
  HttpResponse r = http_request("GET", reg.base_url() + "/v2/", untrusted);
  EXPECT_EQ(r.status, 0);
  EXPECT_NE(r.error.find("certificate"), std::string::npos) << r.error;
  HttpOptions trusted;
  trusted.ca_file = reg.ca_cert_file().string();
  EXPECT_EQ(http_request("GET", reg.base_url() + "/v2/", trusted).status, 401);
}

TEST(RegistryFixture, RestartKeepsStorageAndStopIsReal) {
  Registry reg;
  TempDir layout("layout");
  BuiltImage img = small_image("restart");
  write_oci_layout(layout.path(), {{"v1", img}});
  skopeo_push("oci:" + layout.path().string() + ":v1", reg, "keep/app:v1");

  reg.kill();
  EXPECT_FALSE(reg.running());
  EXPECT_EQ(http_request("GET", reg.base_url() + "/v2/").status, 0) << "still answering after kill";
  reg.start();
  HttpResponse r = get_manifest(reg.base_url(), "keep/app", "v1", "", "");
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.body, img.manifest.data);
}

TEST(RegistryFixture, DestructorStopsTheProcess) {
  std::string url;
  {
    Registry reg;
    url = reg.base_url();
    ASSERT_EQ(http_request("GET", url + "/v2/").status, 200);
  }
  EXPECT_EQ(http_request("GET", url + "/v2/").status, 0);
}

}  // namespace
