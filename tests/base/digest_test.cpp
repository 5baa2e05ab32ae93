#include "img2vm/base/digest.hpp"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <string>
#include <vector>

#include "img2vm/base/error.hpp"
#include "img2vm/base/fd.hpp"

using namespace img2vm;
using fs_path = std::filesystem::path;

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

// A file's digest is remembered by its identity: for an old, unchanged file the entry is what
// comes back (a planted digest proves it is used, a damaged entry is hashed over); a file
// rewritten since is hashed again; a cache that cannot be written costs nothing but the hashing.
TEST(Digest, RememberedFileDigestsFollowTheFilesIdentity) {
  TempDir dir("digest-test");
  const std::filesystem::path old_file = "/usr/bin/env";  // installed long ago: an old ctime
  ASSERT_TRUE(std::filesystem::exists(old_file));
  const fs_path cache = dir.path() / "a" / "cache";
  const Digest real = sha256_file(old_file);
  EXPECT_EQ(sha256_file_remembered(old_file, cache), real);
  std::vector<fs_path> entries;
  for (const auto& e : std::filesystem::directory_iterator(cache)) entries.push_back(e.path());
  ASSERT_EQ(entries.size(), 1u);
  const std::string text = read_file(entries[0]);
  ASSERT_TRUE(text.ends_with(" " + real.str() + "\n")) << text;
  const std::string planted = "sha256:" + std::string(64, 'a');
  write_file_atomic(entries[0],
                    text.substr(0, text.size() - real.str().size() - 1) + planted + "\n");
  EXPECT_EQ(sha256_file_remembered(old_file, cache).str(), planted);
  for (const std::string& bad :
       std::vector<std::string>{"damaged", "", text.substr(0, text.size() - 2) + "\n",
                                text.substr(0, text.size() - 65) + std::string(64, 'g') + "\n"}) {
    write_file_atomic(entries[0], bad);
    EXPECT_EQ(sha256_file_remembered(old_file, cache), real) << bad;
  }

  // An entry is used only for the identity it names: a file rewritten in place (the same
  // inode; times may not move within one clock tick, its size does here) is hashed again
  // although an entry for its old identity is planted.
  const fs_path f = dir.path() / "kernel";
  write_file_atomic(f, "one kernel");
  EXPECT_EQ(sha256_file_remembered(f, cache), Digest::sha256_of("one kernel"));
  const fs_path entry =
      cache / Digest::sha256_of(std::filesystem::absolute(f).lexically_normal().string())
                  .hex()
                  .substr(0, 32);
  auto identity_of = [](const fs_path& p) {
    struct stat st {};
    EXPECT_EQ(::stat(p.c_str(), &st), 0);
    return std::to_string(st.st_dev) + " " + std::to_string(st.st_ino) + " " +
           std::to_string(st.st_size) + " " + std::to_string(st.st_mtim.tv_sec) + "." +
           std::to_string(st.st_mtim.tv_nsec) + " " + std::to_string(st.st_ctim.tv_sec) + "." +
           std::to_string(st.st_ctim.tv_nsec);
  };
  write_file_atomic(entry, identity_of(f) + " " + planted + "\n");
  EXPECT_EQ(sha256_file_remembered(f, cache).str(), planted) << "the entry names this identity";
  {
    const UniqueFd fd = open_file(f, O_WRONLY | O_APPEND);
    ASSERT_EQ(::write(fd.get(), "s", 1), 1);  // in place: the same inode
  }
  EXPECT_EQ(sha256_file_remembered(f, cache), Digest::sha256_of("one kernels"));

  write_file_atomic(dir.path() / "not-a-dir", "x");
  EXPECT_EQ(sha256_file_remembered(old_file, dir.path() / "not-a-dir"), real);
  EXPECT_THROW(sha256_file_remembered(dir.path() / "missing", cache), Error);
}
