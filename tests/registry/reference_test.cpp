#include "img2vm/registry/reference.hpp"

#include <gtest/gtest.h>

#include "img2vm/base/error.hpp"

using img2vm::Error;
using img2vm::registry::Reference;

namespace {

const std::string kHex = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

std::string normalized(const std::string& in) { return Reference::parse(in).str(); }

std::string error_of(const std::string& in) {
  try {
    Reference::parse(in);
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), img2vm::ErrorKind::kInvalidArgument);
    return e.what();
  }
  ADD_FAILURE() << "'" << in << "' was accepted";
  return {};
}

TEST(Reference, NormalizesDockerHubShortNames) {
  EXPECT_EQ(normalized("alpine"), "docker.io/library/alpine:latest");
  EXPECT_EQ(normalized("alpine:3.19"), "docker.io/library/alpine:3.19");
  EXPECT_EQ(normalized("user/app"), "docker.io/user/app:latest");
  EXPECT_EQ(normalized("docker.io/alpine"), "docker.io/library/alpine:latest");
  EXPECT_EQ(normalized("index.docker.io/alpine"), "docker.io/library/alpine:latest");
  EXPECT_EQ(normalized("registry-1.docker.io/user/app:1"), "docker.io/user/app:1");
  EXPECT_EQ(normalized("docker://alpine"), "docker.io/library/alpine:latest");
  auto r = Reference::parse("alpine");
  EXPECT_EQ(r.registry, "docker.io");
  EXPECT_EQ(r.repository, "library/alpine");
  EXPECT_EQ(r.tag, "latest");
  EXPECT_EQ(r.api_host(), "registry-1.docker.io");
  EXPECT_EQ(r.manifest_reference(), "latest");
}

TEST(Reference, OtherRegistries) {
  auto r = Reference::parse("host:5000/a/b:tag");
  EXPECT_EQ(r.registry, "host:5000");
  EXPECT_EQ(r.repository, "a/b");
  EXPECT_EQ(r.tag, "tag");
  EXPECT_EQ(r.api_host(), "host:5000");
  EXPECT_EQ(normalized("localhost/app"), "localhost/app:latest");
  EXPECT_EQ(normalized("localhost:5000/app"), "localhost:5000/app:latest");
  EXPECT_EQ(normalized("ghcr.io/o/r/deep/name:v1.2-rc_3"), "ghcr.io/o/r/deep/name:v1.2-rc_3");
  EXPECT_EQ(normalized("127.0.0.1:5000/x"), "127.0.0.1:5000/x:latest");
  EXPECT_EQ(normalized("[::1]:5000/x:y"), "[::1]:5000/x:y");
  EXPECT_EQ(normalized("Example.COM/x"), "example.com/x:latest");
  // A single component is never a registry, even with a port-like look-alike missing a slash.
  EXPECT_EQ(Reference::parse("myhost/app").registry, "docker.io");
  EXPECT_EQ(Reference::parse("myhost/app").repository, "myhost/app");
}

TEST(Reference, Digests) {
  auto r = Reference::parse("alpine@sha256:" + kHex);
  EXPECT_TRUE(r.tag.empty());
  ASSERT_TRUE(r.digest);
  EXPECT_EQ(r.digest->hex(), kHex);
  EXPECT_EQ(r.str(), "docker.io/library/alpine@sha256:" + kHex);
  EXPECT_EQ(r.manifest_reference(), "sha256:" + kHex);
  auto both = Reference::parse("h:1/a:v1@sha256:" + kHex);
  EXPECT_EQ(both.tag, "v1");
  EXPECT_EQ(both.str(), "h:1/a:v1@sha256:" + kHex);
  EXPECT_EQ(both.manifest_reference(), "sha256:" + kHex);
}

TEST(Reference, SeparatorsInNames) {
  EXPECT_EQ(normalized("a/b.c_d__e---f"), "docker.io/a/b.c_d__e---f:latest");
  EXPECT_EQ(normalized("a/x:_tag"), "docker.io/a/x:_tag");
  EXPECT_EQ(normalized("a/x:" + std::string(128, 'T')), "docker.io/a/x:" + std::string(128, 'T'));
}

TEST(Reference, InvalidReferencesSayWhatIsWrong) {
  EXPECT_NE(error_of("").find("empty reference"), std::string::npos);
  EXPECT_NE(error_of("Alpine").find("must be lowercase"), std::string::npos);
  EXPECT_NE(error_of("docker.io/Library/alpine").find("must be lowercase"), std::string::npos);
  EXPECT_NE(error_of("alpine:").find("empty tag"), std::string::npos);
  EXPECT_NE(error_of("alpine:-x").find("must start with"), std::string::npos);
  EXPECT_NE(error_of("alpine:" + std::string(129, 'a')).find("longer than 128"), std::string::npos);
  EXPECT_NE(error_of("alpine@sha256:abc").find("not a valid digest"), std::string::npos);
  EXPECT_NE(error_of("alpine@").find("empty digest"), std::string::npos);
  EXPECT_NE(error_of("a@sha256:" + kHex + "@x").find("more than one '@'"), std::string::npos);
  EXPECT_NE(error_of("a//b").find("empty path component"), std::string::npos);
  EXPECT_NE(error_of("a/b/").find("empty path component"), std::string::npos);
  EXPECT_NE(error_of("a/-b").find("must start and end"), std::string::npos);
  EXPECT_NE(error_of("a/b...c").find("separator '...'"), std::string::npos);
  EXPECT_NE(error_of("a/b$c").find("character '$'"), std::string::npos);
  EXPECT_NE(error_of("host:/a").find("empty port"), std::string::npos);
  EXPECT_NE(error_of("host:99x/a").find("invalid port"), std::string::npos);
  EXPECT_NE(error_of("bad_host.com/a").find("registry host"), std::string::npos);
  EXPECT_NE(error_of("example.com/").find("missing repository name"), std::string::npos);
  EXPECT_NE(error_of("al pine").find("whitespace"), std::string::npos);
  EXPECT_NE(error_of(kHex).find("image ID"), std::string::npos);
  EXPECT_NE(error_of("a/" + std::string(260, 'b')).find("longer than 255"), std::string::npos);
  // The input is quoted in the message.
  EXPECT_NE(error_of("Alpine").find("'Alpine'"), std::string::npos);
}

TEST(Reference, Loopback) {
  using img2vm::registry::is_loopback_host;
  EXPECT_TRUE(is_loopback_host("localhost"));
  EXPECT_TRUE(is_loopback_host("localhost:5000"));
  EXPECT_TRUE(is_loopback_host("127.0.0.1:5000"));
  EXPECT_TRUE(is_loopback_host("127.1.2.3"));
  EXPECT_TRUE(is_loopback_host("[::1]:5000"));
  EXPECT_TRUE(is_loopback_host("reg.localhost:1"));
  EXPECT_FALSE(is_loopback_host("docker.io"));
  EXPECT_FALSE(is_loopback_host("127.example.com"));
  EXPECT_FALSE(is_loopback_host("10.0.0.1:5000"));
}

}  // namespace
