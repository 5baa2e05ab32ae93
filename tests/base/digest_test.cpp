#include "img2vm/base/digest.hpp"

#include <gtest/gtest.h>

#include <filesystem>

#include "img2vm/base/error.hpp"
#include "img2vm/base/fd.hpp"

using namespace img2vm;

TEST(Digest, Sha256OfKnownVectors) {
  EXPECT_EQ(Digest::sha256_of("").str(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(Digest::sha256_of("abc").str(),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

TEST(Digest, StreamingEqualsOneShot) {
  std::string data(1 << 20, 'x');
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<char>(i * 31 + 7);
  Sha256 h;
  for (size_t off = 0; off < data.size(); off += 4093)
    h.update(std::string_view(data).substr(off, 4093));
  EXPECT_EQ(h.bytes(), data.size());
  EXPECT_EQ(h.finish(), Digest::sha256_of(data));
}

TEST(Digest, ParseAcceptsValidAndSplits) {
  auto d = Digest::parse("sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(d.algorithm(), "sha256");
  EXPECT_EQ(d.hex().size(), 64u);
  EXPECT_EQ(d.short_hex(), "e3b0c44298fc");
}

TEST(Digest, ParseRejectsWithReason) {
  struct Case {
    const char* text;
    const char* why;
  } cases[] = {
      {"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", "missing ':'"},
      {"md5:d41d8cd98f00b204e9800998ecf8427e", "unsupported digest algorithm 'md5'"},
      {"sha256:abc", "needs 64 hex characters, got 3"},
      {"sha256:E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855", "lowercase hex"},
      {"sha256:z3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", "lowercase hex"},
  };
  for (const auto& c : cases) {
    EXPECT_FALSE(Digest::valid(c.text)) << c.text;
    try {
      Digest::parse(c.text);
      ADD_FAILURE() << "accepted " << c.text;
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::kInvalidArgument);
      EXPECT_NE(std::string(e.what()).find(c.why), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find(c.text), std::string::npos)
          << "error does not name the input";
    }
  }
}

TEST(Digest, FileDigestMatchesContent) {
  TempDir dir("digest-test");
  auto p = dir.path() / "blob";
  write_file_atomic(p, "hello world\n");
  EXPECT_EQ(sha256_file(p), Digest::sha256_of("hello world\n"));
  EXPECT_THROW(sha256_file(dir.path() / "missing"), Error);
}
