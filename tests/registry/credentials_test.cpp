#include "img2vm/registry/credentials.hpp"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "img2vm/base/error.hpp"
#include "img2vm/base/fd.hpp"

using namespace img2vm;
using namespace img2vm::registry;

TEST(Credentials, Base64) {
  for (const std::string& s : std::vector<std::string>{"", "a", "ab", "abc", "user:p@ss:w0rd",
                                                       std::string("\0\xff\x10", 3)})
    EXPECT_EQ(base64_decode(base64_encode(s)), s);
  EXPECT_EQ(base64_encode("img2vm:s3cret"), "aW1nMnZtOnMzY3JldA==");
  EXPECT_THROW(base64_decode("a*b="), Error);
}

TEST(Credentials, DockerConfigAuths) {
  TempDir d("dockercfg");
  nlohmann::json j = {
      {"auths",
       {{"https://index.docker.io/v1/", {{"auth", base64_encode("hubuser:hubpass")}}},
        {"reg.example:5000", {{"auth", base64_encode("u:p:with:colons")}}},
        {"https://tok.example/v2/", {{"identitytoken", "refresh-me"}}}}}};
  write_file_atomic(d.path() / "config.json", j.dump());
  auto hub = lookup_docker_credentials("docker.io", d.path());
  ASSERT_TRUE(hub);
  EXPECT_EQ(hub->username, "hubuser");
  EXPECT_EQ(hub->password, "hubpass");
  auto reg = lookup_docker_credentials("reg.example:5000", d.path());
  ASSERT_TRUE(reg);
  EXPECT_EQ(reg->password, "p:with:colons");
  auto tok = lookup_docker_credentials("tok.example", d.path());
  ASSERT_TRUE(tok);
  EXPECT_EQ(tok->identity_token, "refresh-me");
  EXPECT_FALSE(lookup_docker_credentials("other.example", d.path()));
  TempDir none("dockercfg");
  EXPECT_FALSE(lookup_docker_credentials("docker.io", none.path()));
}

TEST(Credentials, MalformedConfigNamesTheFile) {
  TempDir d("dockercfg");
  write_file_atomic(d.path() / "config.json", "{not json");
  try {
    lookup_docker_credentials("docker.io", d.path());
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("config.json"), std::string::npos);
  }
  write_file_atomic(d.path() / "config.json", R"({"auths":{"docker.io":{"auth":"bm9jb2xvbg=="}}})");
  try {
    lookup_docker_credentials("docker.io", d.path());
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("not user:password"), std::string::npos) << e.what();
  }
}
