#include "www_authenticate.hpp"

#include <gtest/gtest.h>

#include "img2vm/base/error.hpp"

using img2vm::Error;
using img2vm::registry::parse_www_authenticate;

TEST(WwwAuthenticate, DockerHubBearer) {
  auto c = parse_www_authenticate(
      R"(Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull")");
  ASSERT_EQ(c.size(), 1u);
  EXPECT_EQ(c[0].scheme, "bearer");
  EXPECT_EQ(c[0].param("realm"), "https://auth.docker.io/token");
  EXPECT_EQ(c[0].param("service"), "registry.docker.io");
  EXPECT_EQ(c[0].param("scope"), "repository:library/alpine:pull");
  EXPECT_EQ(c[0].param("missing"), "");
}

TEST(WwwAuthenticate, CommasAndEscapesInsideQuotes) {
  auto c = parse_www_authenticate(
      R"(Bearer realm="https://r/t", scope="repository:a:pull,push repository:b:pull", error="insufficient_scope", note="a \"q\" \\ b")");
  ASSERT_EQ(c.size(), 1u);
  EXPECT_EQ(c[0].param("scope"), "repository:a:pull,push repository:b:pull");
  EXPECT_EQ(c[0].param("error"), "insufficient_scope");
  EXPECT_EQ(c[0].param("note"), R"(a "q" \ b)");
}

TEST(WwwAuthenticate, SchemeAndNamesAreCaseInsensitiveTokensAllowed) {
  auto c = parse_www_authenticate(R"(BASIC Realm=registry , charset="UTF-8")");
  ASSERT_EQ(c.size(), 1u);
  EXPECT_EQ(c[0].scheme, "basic");
  EXPECT_EQ(c[0].param("realm"), "registry");
  EXPECT_EQ(c[0].param("charset"), "UTF-8");
}

TEST(WwwAuthenticate, SeveralChallenges) {
  auto c = parse_www_authenticate(
      R"(Basic realm="x", Bearer realm="https://a/token",service=s, Negotiate abc123==)");
  ASSERT_EQ(c.size(), 3u);
  EXPECT_EQ(c[0].scheme, "basic");
  EXPECT_EQ(c[0].param("realm"), "x");
  EXPECT_EQ(c[1].scheme, "bearer");
  EXPECT_EQ(c[1].param("service"), "s");
  EXPECT_EQ(c[2].scheme, "negotiate");
  EXPECT_EQ(c[2].token68, "abc123==");
  auto bare = parse_www_authenticate("Basic");
  ASSERT_EQ(bare.size(), 1u);
  EXPECT_TRUE(bare[0].params.empty());
  EXPECT_TRUE(parse_www_authenticate("").empty());
}

TEST(WwwAuthenticate, MalformedIsAnError) {
  EXPECT_THROW(parse_www_authenticate(R"(Bearer realm="unterminated)"), Error);
  EXPECT_THROW(parse_www_authenticate(R"(Bearer realm="x" service="y")"), Error);
  EXPECT_THROW(parse_www_authenticate(R"(Bearer =x)"), Error);
  EXPECT_THROW(parse_www_authenticate(std::string(70000, 'a')), Error);
  try {
    parse_www_authenticate(R"(Bearer realm="x)");
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("unterminated quoted string"), std::string::npos)
        << e.what();
  }
}
