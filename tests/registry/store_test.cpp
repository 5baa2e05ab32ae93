// The store's blob ingest on its own: pieces of any size gathered into the partial file, an
// interrupted download resumed, and a wrong blob refused without leaving anything behind.
#include "img2vm/registry/store.hpp"

#include <gtest/gtest.h>

#include <random>

#include "img2vm/base/error.hpp"
#include "img2vm/base/fd.hpp"

using namespace img2vm;
using namespace img2vm::registry;

namespace {

std::string random_bytes(size_t n, unsigned seed) {
  std::mt19937 rng(seed);
  std::string s(n, '\0');
  for (char& c : s) c = static_cast<char>(rng());
  return s;
}

Descriptor describe(const std::string& data) {
  Descriptor d;
  d.media_type = "application/vnd.oci.image.layer.v1.tar";
  d.digest = Digest::sha256_of(data);
  d.size = static_cast<int64_t>(data.size());
  return d;
}

// Writes data[from, to) in pieces whose sizes cycle through `sizes`.
void feed(Ingest& in, const std::string& data, size_t from, size_t to,
          const std::vector<size_t>& sizes) {
  size_t i = 0;
  while (from < to) {
    size_t n = std::min(sizes[i++ % sizes.size()], to - from);
    in.write(data.data() + from, n);
    from += n;
  }
}

}  // namespace

TEST(Ingest, PiecesOfAnySizeResumedAfterAnInterruptionGiveTheSameBlob) {
  TempDir home("store");
  Store store(home.path());
  // Several MiB so that the gather buffer fills and is written out many times, with piece
  // sizes that straddle its end (16 KiB as curl hands them over, odd sizes, one over 1 MiB).
  const std::string a = random_bytes((5u << 20) + 12345, 1);
  const std::string b = random_bytes((3u << 20) + 777, 2);
  const Descriptor da = describe(a), db = describe(b);
  const size_t cut = (2u << 20) + 4099;
  {
    auto in = store.ingest(da);
    ASSERT_FALSE(in->already_present());
    EXPECT_EQ(in->resumed_from(), 0u);
    feed(*in, a, 0, cut, {16384, 1, 65537, 4095, (1u << 20) + 3});
    EXPECT_EQ(in->offset(), cut);
    // Dropped here without verify(): what was received stays for the next attempt.
  }
  EXPECT_FALSE(store.has_blob(da.digest));
  {
    // Another blob in between reuses the buffer the interrupted one gave back.
    auto in = store.ingest(db);
    feed(*in, b, 0, b.size(), {16384});
    in->commit();
  }
  auto in = store.ingest(da);
  EXPECT_EQ(in->resumed_from(), cut);
  EXPECT_EQ(in->offset(), cut);
  feed(*in, a, cut, a.size(), {16384, 333, 1u << 20});
  in->commit();
  in.reset();
  EXPECT_TRUE(store.has_blob(da.digest, da.size));
  EXPECT_EQ(read_file(store.blob_path(da.digest)), a);
  EXPECT_EQ(read_file(store.blob_path(db.digest)), b);
  EXPECT_FALSE(std::filesystem::exists(home.path() / "ingest" / (da.digest.hex() + ".partial")));
}

TEST(Ingest, WrongContentIsRefusedNamingTheDigestAndLeavesNoPartialFile) {
  TempDir home("store");
  Store store(home.path());
  const std::string good = random_bytes((1u << 20) + 100, 3);
  std::string bad = good;
  bad[bad.size() / 2] ^= 1;
  const Descriptor d = describe(good);
  auto in = store.ingest(d);
  feed(*in, bad, 0, bad.size(), {16384});
  try {
    in->verify();
    FAIL() << "a corrupted blob was accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kIntegrity);
    EXPECT_NE(std::string(e.what()).find(d.digest.str()), std::string::npos) << e.what();
  }
  EXPECT_FALSE(std::filesystem::exists(home.path() / "ingest" / (d.digest.hex() + ".partial")));
  EXPECT_FALSE(store.has_blob(d.digest));
  in.reset();

  // More bytes than the descriptor says: refused as soon as they arrive.
  auto again = store.ingest(d);
  feed(*again, good, 0, good.size(), {16384});
  EXPECT_THROW(again->write("x", 1), Error);
  EXPECT_FALSE(std::filesystem::exists(home.path() / "ingest" / (d.digest.hex() + ".partial")));
}

// A store only read from (a convert of an oci: directory opens one) writes no file: its
// oci-layout and index.json come with the first image, then it is a whole OCI layout.
TEST(Store, WritesItsLayoutFilesWithTheFirstImageOnly) {
  TempDir tmp("img2vm-store-test");
  Store s(tmp.path() / "home");
  const auto layout = s.layout_dir();
  EXPECT_TRUE(std::filesystem::is_directory(layout / "blobs" / "sha256"));
  EXPECT_FALSE(std::filesystem::exists(layout / "oci-layout"));
  EXPECT_FALSE(std::filesystem::exists(layout / "index.json"));
  EXPECT_TRUE(s.list().empty());
  EXPECT_FALSE(s.find("example.com/a:1"));
  EXPECT_FALSE(s.remove_image("example.com/a:1"));
  EXPECT_FALSE(std::filesystem::exists(layout / "index.json"));

  StoredImage img;
  img.name = "example.com/a:1";
  img.manifest = describe("{}");
  img.manifest.media_type = "application/vnd.oci.image.manifest.v1+json";
  s.put_image(img);
  EXPECT_EQ(read_file(layout / "oci-layout"), R"({"imageLayoutVersion":"1.0.0"})");
  ASSERT_EQ(s.list().size(), 1u);
  EXPECT_EQ(Store(tmp.path() / "home").list().at(0).name, "example.com/a:1");
  EXPECT_NE(read_file(layout / "index.json").find("\"schemaVersion\": 2"), std::string::npos);
  EXPECT_TRUE(s.remove_image("example.com/a:1"));
  EXPECT_TRUE(s.list().empty());
}
