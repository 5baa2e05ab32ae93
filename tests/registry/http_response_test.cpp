// The registry client's response parsing on its own: header lines, Content-Length,
// Content-Range, Retry-After, Docker-Content-Digest, URL origins, redirects, where credentials
// may go, token and error bodies.
#include "http_response.hpp"

#include <gtest/gtest.h>

#include "img2vm/base/error.hpp"

using namespace img2vm;
using namespace img2vm::registry;
using std::chrono::seconds;

TEST(HttpResponse, HeaderLines) {
  auto f = parse_header_line("Content-Range:  bytes 0-9/10 \r\n");
  ASSERT_TRUE(f);
  EXPECT_EQ(f->name, "content-range");
  EXPECT_EQ(f->value, "bytes 0-9/10");
  EXPECT_FALSE(parse_header_line("HTTP/1.1 200 OK\r\n"));
  EXPECT_FALSE(parse_header_line("\r\n"));
  EXPECT_FALSE(parse_header_line(": no name\r\n"));
  EXPECT_FALSE(parse_header_line("Bad Name: x\r\n"));
  EXPECT_FALSE(parse_header_line(" folded continuation\r\n"));

  ResponseHeaders h;
  EXPECT_TRUE(h.add("HTTP/1.1 401 Unauthorized\r\n"));
  EXPECT_TRUE(h.add("WWW-Authenticate: Bearer realm=\"a\"\r\n"));
  EXPECT_TRUE(h.add("www-authenticate: Basic realm=\"b\"\r\n"));
  EXPECT_TRUE(h.add("Location: /one\r\n"));
  EXPECT_TRUE(h.add("Location: /two\r\n"));
  EXPECT_EQ(h.get("www-authenticate"), "Bearer realm=\"a\", Basic realm=\"b\"");
  EXPECT_EQ(h.get("location"), "/two");
  // A new status line (after a redirect or 100 Continue) starts over.
  EXPECT_TRUE(h.add("HTTP/1.1 200 OK\r\n"));
  EXPECT_EQ(h.get("location"), "");
  EXPECT_EQ(h.bytes(), 0u);
  // Bounded: a registry sending endless headers is cut off.
  std::string big = "X-Filler: " + std::string(64 << 10, 'a') + "\r\n";
  int accepted = 0;
  while (h.add(big) && accepted < 100) ++accepted;
  EXPECT_EQ(accepted, 3);
  EXPECT_GT(h.bytes(), ResponseHeaders::kMaxBytes);
}

TEST(HttpResponse, ContentLengthAndRetryAfter) {
  EXPECT_EQ(parse_content_length("0"), 0u);
  EXPECT_EQ(parse_content_length(" 21205782 "), 21205782u);
  EXPECT_FALSE(parse_content_length(""));
  EXPECT_FALSE(parse_content_length("-1"));
  EXPECT_FALSE(parse_content_length("12, 12"));
  EXPECT_FALSE(parse_content_length("99999999999999999999"));
  EXPECT_EQ(parse_retry_after("5"), seconds(5));
  EXPECT_EQ(parse_retry_after("3600"), seconds(60));  // capped
  EXPECT_EQ(parse_retry_after("99999999999999999999999"), seconds(60));
  EXPECT_EQ(parse_retry_after("10", seconds(3)), seconds(3));
  EXPECT_FALSE(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"));
  EXPECT_FALSE(parse_retry_after("-5"));
  EXPECT_FALSE(parse_retry_after(""));
}

TEST(HttpResponse, ContentRange) {
  auto r = parse_content_range("bytes 100-199/200");
  ASSERT_TRUE(r);
  EXPECT_FALSE(r->unsatisfied);
  EXPECT_EQ(r->first, 100u);
  EXPECT_EQ(r->last, 199u);
  EXPECT_EQ(r->complete, 200u);
  r = parse_content_range("bytes 0-0/*");
  ASSERT_TRUE(r);
  EXPECT_FALSE(r->complete);
  // What distribution sends with 416 for a range past the end.
  r = parse_content_range("bytes */21205782");
  ASSERT_TRUE(r);
  EXPECT_TRUE(r->unsatisfied);
  EXPECT_EQ(r->complete, 21205782u);
  for (const char* bad : {"", "bytes", "bytes 5-4/10", "bytes 0-10/10", "items 0-1/2", "bytes */*",
                          "bytes 1-2", "bytes -1-2/3", "bytes 1-/3", "bytes 0-1/2x"})
    EXPECT_FALSE(parse_content_range(bad)) << bad;
}

TEST(HttpResponse, DockerContentDigest) {
  std::string d = "sha256:" + std::string(64, 'a');
  EXPECT_EQ(parse_docker_content_digest(" " + d + " ")->str(), d);
  EXPECT_FALSE(parse_docker_content_digest("sha256:abc"));
  EXPECT_FALSE(parse_docker_content_digest(""));
}

TEST(HttpResponse, UrlOrigins) {
  auto o = url_origin("HTTPS://Registry.Example:443/v2/?x=1");
  ASSERT_TRUE(o);
  EXPECT_EQ(o->scheme, "https");
  EXPECT_EQ(o->host, "registry.example");
  EXPECT_EQ(o->port, 443u);
  EXPECT_EQ(o->authority(), "registry.example");
  EXPECT_EQ(url_origin("http://127.0.0.1:5000/v2/")->authority(), "127.0.0.1:5000");
  EXPECT_EQ(url_origin("http://h/")->port, 80u);
  EXPECT_EQ(url_origin("https://[::1]:5000/")->host, "[::1]");
  for (const char* bad :
       {"", "ftp://h/", "file:///etc/passwd", "/relative", "https://", "https://h:0/",
        "https://h:70000/", "https://user:pw@h/", "https://h/a b", "h:5000"})
    EXPECT_FALSE(url_origin(bad)) << bad;
}

TEST(HttpResponse, Redirects) {
  EXPECT_EQ(resolve_redirect("https://r.example/v2/a/blobs/x", "https://cdn.example/b?sig=1"),
            "https://cdn.example/b?sig=1");
  EXPECT_EQ(resolve_redirect("https://r.example/v2/a/blobs/x", "/other/path"),
            "https://r.example/other/path");
  EXPECT_EQ(resolve_redirect("https://r.example:5000/v2/a/blobs/x", "y"),
            "https://r.example:5000/v2/a/blobs/y");
  EXPECT_EQ(resolve_redirect("https://r.example/v2/", "//cdn.example/z"), "https://cdn.example/z");
  EXPECT_FALSE(resolve_redirect("https://r.example/v2/", ""));
  EXPECT_FALSE(resolve_redirect("https://r.example/v2/", "file:///etc/passwd"));
  EXPECT_FALSE(resolve_redirect("https://r.example/v2/", "ftp://r.example/x"));
  EXPECT_FALSE(resolve_redirect("https://r.example/v2/", "https://u:p@cdn.example/"));
  EXPECT_FALSE(resolve_redirect("https://r.example/v2/", std::string("/a\0b", 4)));
  EXPECT_FALSE(resolve_redirect("https://r.example/v2/", "/a\r\nX-Injected: 1"));
  EXPECT_FALSE(resolve_redirect("not a url", "/x"));
}

TEST(HttpResponse, CredentialsOnlyToTheirOriginAndNeverOverPlainHttpUnlessAllowed) {
  UrlOrigin reg = *url_origin("https://reg.example");
  EXPECT_TRUE(may_send_credentials("https://reg.example/v2/a/manifests/1", reg, false));
  EXPECT_TRUE(may_send_credentials("https://REG.example:443/v2/", reg, false));
  // The same host over plain http (the redirect of issue 14), another port, another host.
  EXPECT_FALSE(may_send_credentials("http://reg.example/v2/a/manifests/1", reg, false));
  EXPECT_FALSE(may_send_credentials("http://reg.example/v2/a/manifests/1", reg, true));
  EXPECT_FALSE(may_send_credentials("https://reg.example:8443/v2/", reg, false));
  EXPECT_FALSE(may_send_credentials("https://cdn.example/v2/", reg, false));
  EXPECT_FALSE(may_send_credentials("garbage", reg, true));
  // A registry served over plain http (loopback, or named insecure) gets them only when allowed.
  UrlOrigin plain = *url_origin("http://127.0.0.1:5000");
  EXPECT_TRUE(may_send_credentials("http://127.0.0.1:5000/v2/", plain, true));
  EXPECT_FALSE(may_send_credentials("http://127.0.0.1:5000/v2/", plain, false));
  EXPECT_FALSE(may_send_credentials("https://127.0.0.1:5000/v2/", plain, true));
}

TEST(HttpResponse, TokenBodies) {
  auto t = parse_token_response(R"({"token":"abc.def","expires_in":300})", "https://auth");
  EXPECT_EQ(t.token, "abc.def");
  EXPECT_EQ(t.expires_in, seconds(300));
  t = parse_token_response(R"({"access_token":"x"})", "https://auth");
  EXPECT_EQ(t.token, "x");
  EXPECT_EQ(t.expires_in, seconds(60));
  EXPECT_EQ(parse_token_response(R"({"token":"","access_token":"y","expires_in":5})", "r").token,
            "y");
  EXPECT_EQ(parse_token_response(R"({"token":"y","expires_in":5})", "r").expires_in, seconds(60));
  EXPECT_EQ(parse_token_response(R"({"token":"y","expires_in":-5})", "r").expires_in, seconds(60));
  // A huge lifetime must not overflow the clock: capped at a day.
  EXPECT_EQ(
      parse_token_response(R"({"token":"y","expires_in":18446744073709551615})", "r").expires_in,
      seconds(86400));
  EXPECT_EQ(
      parse_token_response(R"({"token":"y","expires_in":9223372036854775807})", "r").expires_in,
      seconds(86400));
  for (const char* bad : {"", "[]", "null", "{}", R"({"token":5})", R"({"token":"a\r\nX-Evil: 1"})",
                          R"({"token":"a b"})"}) {
    try {
      parse_token_response(bad, "https://auth.example/token");
      ADD_FAILURE() << "accepted " << bad;
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::kAuth);
      EXPECT_NE(std::string(e.what()).find("https://auth.example/token"), std::string::npos)
          << e.what();
    }
  }
  EXPECT_THROW(parse_token_response(R"({"token":")" + std::string(kMaxToken + 1, 'a') + "\"}", "r"),
               Error);
}

TEST(HttpResponse, ErrorBodies) {
  auto e = parse_registry_error(
      R"({"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown","detail":{}}]})");
  EXPECT_EQ(e.code, "MANIFEST_UNKNOWN");
  EXPECT_EQ(e.message, "manifest unknown");
  EXPECT_EQ(parse_registry_error("not json").code, "");
  EXPECT_EQ(parse_registry_error(R"({"errors":[]})").code, "");
  EXPECT_EQ(parse_registry_error(R"({"errors":[5]})").code, "");
  EXPECT_EQ(parse_registry_error(R"({"errors":[{"code":1,"message":"m"}]})").message, "m");
  // One printable line, bounded: a hostile registry cannot forge lines in our error output.
  e = parse_registry_error(R"({"errors":[{"code":"X\nY","message":"line1\r\nimg2vm: fake\u0000)" +
                           std::string(500, 'z') + "\"}]}");
  EXPECT_EQ(e.code, "X Y");
  EXPECT_EQ(e.message.find_first_of(std::string("\r\n\0", 3)), std::string::npos);
  EXPECT_LE(e.message.size(), kMaxErrorText);
}
