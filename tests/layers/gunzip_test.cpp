// GzipReader (isa-l inflate) against streams written by zlib: contents, chunking on both sides,
// header fields, concatenated members, trailing bytes, and every kind of damage.
#include "gunzip.hpp"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <zlib.h>

#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "decoder_testing.hpp"
#include "image_builder.hpp"
#include "img2vm/base/error.hpp"
#include "img2vm/base/fd.hpp"
#include "img2vm/layers/apply.hpp"

using namespace img2vm;
using namespace img2vm::layers;
using img2vm::testing::sample_data;

namespace {

struct Header {
  std::string name, comment, extra;
  bool hcrc = false;
};

// One gzip member of `data` written by zlib (windowBits 15 + 16), with optional header fields.
std::string gzip_member(const std::string& data, int level = 6, const Header* h = nullptr) {
  z_stream z{};
  if (deflateInit2(&z, level, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) != Z_OK)
    throw std::runtime_error("deflateInit2");
  gz_header gh{};
  std::string name, comment, extra;
  if (h) {
    name = h->name;
    comment = h->comment;
    extra = h->extra;
    gh.name = name.empty() ? Z_NULL : reinterpret_cast<Bytef*>(name.data());
    gh.comment = comment.empty() ? Z_NULL : reinterpret_cast<Bytef*>(comment.data());
    gh.extra = extra.empty() ? Z_NULL : reinterpret_cast<Bytef*>(extra.data());
    gh.extra_len = static_cast<uInt>(extra.size());
    gh.hcrc = h->hcrc ? 1 : 0;
    gh.os = 3;
    if (deflateSetHeader(&z, &gh) != Z_OK) throw std::runtime_error("deflateSetHeader");
  }
  std::string out(deflateBound(&z, data.size()) + 4096, '\0');
  z.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(data.data()));
  z.avail_in = static_cast<uInt>(data.size());
  z.next_out = reinterpret_cast<Bytef*>(out.data());
  z.avail_out = static_cast<uInt>(out.size());
  int r = deflate(&z, Z_FINISH);
  deflateEnd(&z);
  if (r != Z_STREAM_END) throw std::runtime_error("deflate did not finish");
  out.resize(z.total_out);
  return out;
}

// Reads `gz` fully through a GzipReader, handing the input over in `in_chunk`-byte pieces and
// asking for `out_chunk` bytes at a time.
std::string gunzip(const std::string& gz, size_t in_chunk = 1 << 20, size_t out_chunk = 1 << 17,
                   GzipReader** keep = nullptr) {
  static thread_local std::unique_ptr<GzipReader> last;
  last = std::make_unique<GzipReader>(img2vm::testing::bytes_source(gz, in_chunk), "layer test");
  std::string out = img2vm::testing::read_to_end(*last, out_chunk);
  if (keep) *keep = last.get();
  return out;
}

// The error GzipReader gives for `gz`, or "" when it decodes.
std::string failure(const std::string& gz) {
  try {
    gunzip(gz);
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kIntegrity) << e.what();
    return e.what();
  }
  return "";
}

}  // namespace

TEST(Gunzip, DecodesWhatZlibWroteWhateverTheChunking) {
  const std::string data = sample_data(3 << 20, 1);
  for (int level : {1, 6, 9}) {
    const std::string gz = gzip_member(data, level);
    GzipReader* r = nullptr;
    EXPECT_EQ(gunzip(gz, 1 << 20, 1 << 17, &r), data) << "level " << level;
    EXPECT_EQ(r->bytes_out(), data.size());
    EXPECT_EQ(r->bytes_in(), gz.size());
    EXPECT_EQ(r->members(), 1u);
  }
  const std::string gz = gzip_member(data.substr(0, 300000));
  for (auto [in_chunk, out_chunk] :
       std::vector<std::pair<size_t, size_t>>{{1, 4096}, {13, 1}, {4096, 7}, {gz.size(), 3 << 20}})
    EXPECT_EQ(gunzip(gz, in_chunk, out_chunk), data.substr(0, 300000))
        << in_chunk << "/" << out_chunk;
}

TEST(Gunzip, HeaderFieldsAreSkippedAndTheirCrcChecked) {
  const std::string data = sample_data(100000, 2);
  Header h{"layer.tar", "made by a test", std::string("AB\x04\x00xyzw", 8), true};
  const std::string gz = gzip_member(data, 6, &h);
  ASSERT_EQ(static_cast<uint8_t>(gz[3]), 0x1e);  // FHCRC | FEXTRA | FNAME | FCOMMENT
  EXPECT_EQ(gunzip(gz), data);
  EXPECT_EQ(gunzip(gz, 1), data);  // header fields split across every read
  std::string bad = gz;
  bad[12] ^= 0x20;  // inside the extra field: the header CRC no longer matches
  EXPECT_NE(failure(bad).find("header's CRC"), std::string::npos) << failure(bad);
}

TEST(Gunzip, ConcatenatedMembersAreOneStream) {
  const std::string a = sample_data(70000, 3), b = sample_data(50000, 4);
  const std::string gz = gzip_member(a) + gzip_member("") + gzip_member(b, 1);
  GzipReader* r = nullptr;
  EXPECT_EQ(gunzip(gz, 1 << 20, 1 << 17, &r), a + b);
  EXPECT_EQ(r->members(), 3u);
  EXPECT_EQ(gunzip(gz, 5, 999), a + b);
  EXPECT_EQ(gunzip(gzip_member("")), "");
}

TEST(Gunzip, BytesAfterTheLastMemberEndTheStreamUndecoded) {
  const std::string data = sample_data(40000, 5);
  const std::string gz = gzip_member(data);
  for (const std::string& tail :
       {std::string(1024, '\0'), std::string("trailing garbage"), std::string("\x1f")}) {
    GzipReader* r = nullptr;
    EXPECT_EQ(gunzip(gz + tail, 1 << 20, 1 << 17, &r), data);
    EXPECT_EQ(r->bytes_in(), gz.size());
    EXPECT_EQ(r->members(), 1u);
  }
  // What starts like another member must be one.
  EXPECT_NE(failure(gz + "\x1f\x8b\x08garbage"), "");
}

TEST(Gunzip, DamageIsAnIntegrityErrorNamingTheLayer) {
  const std::string data = sample_data(200000, 6);
  const std::string gz = gzip_member(data);
  std::string e = failure(gz.substr(0, gz.size() - 1));
  EXPECT_NE(e.find("layer test: corrupt gzip stream"), std::string::npos) << e;
  EXPECT_NE(e.find("truncated"), std::string::npos) << e;
  // Truncated anywhere, including inside the header and the trailer.
  for (size_t cut : {size_t{1}, size_t{5}, size_t{10}, gz.size() / 3, gz.size() / 2, gz.size() - 8,
                     gz.size() - 4})
    EXPECT_NE(failure(gz.substr(0, cut)), "") << "cut at " << cut;
  std::string crc = gz;
  crc[crc.size() - 6] ^= 1;  // CRC-32 in the trailer
  EXPECT_NE(failure(crc).find("trailer's CRC-32"), std::string::npos) << failure(crc);
  std::string len = gz;
  len[len.size() - 2] ^= 1;  // ISIZE in the trailer
  EXPECT_NE(failure(len).find("trailer's CRC-32 or length"), std::string::npos) << failure(len);
  std::string method = gz;
  method[2] = 7;  // CM must be 8 (deflate)
  EXPECT_NE(failure(method).find("compression method 7 is not deflate"), std::string::npos);
  std::string flags = gz;
  flags[3] |= 0x20;  // a reserved flag
  EXPECT_NE(failure(flags).find("reserved header flags"), std::string::npos);
  EXPECT_NE(failure("ustar   not gzip at all").find("bad magic"), std::string::npos);
  EXPECT_NE(failure("").find("empty input"), std::string::npos);
  // Flipped bits all through the deflate data: every one is caught (bad code, or the CRC).
  for (size_t i = 20; i + 8 < gz.size(); i += gz.size() / 37) {
    std::string flipped = gz;
    flipped[i] ^= 0x10;
    EXPECT_NE(failure(flipped), "") << "flip at " << i;
  }
}

TEST(Gunzip, SourceErrorsPassThrough) {
  GzipReader r([](void*, size_t) -> size_t { throw Error(ErrorKind::kIo, "disk on fire"); },
               "layer test");
  char b[16];
  try {
    r.read(b, sizeof b);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kIo);
    EXPECT_STREQ(e.what(), "disk on fire");
  }
}

TEST(Gunzip, DecodeTarUsesItForGzipLayers) {
  // A gzip layer whose tar is fine but whose trailer CRC is wrong: only a checking inflater
  // notices (the tar's end-of-archive blocks come before the trailer).
  const std::string tar =
      img2vm::testing::make_layer_tar({img2vm::testing::file("etc/hello", "hello\n")});
  std::string gz = gzip_member(tar);
  auto decode = [&](const std::string& blob) {
    TempDir dir("img2vm-gunzip-test");
    UniqueFd spool = open_file(dir.path() / "spool", O_RDWR | O_CREAT, 0600);
    return decode_tar(img2vm::testing::bytes_source(blob), Compression::kGzip, spool.get(), {},
                      "layer x");
  };
  DecodedLayer good = decode(gz);
  ASSERT_EQ(good.entries.size(), 1u);
  EXPECT_EQ(good.entries[0].path, "etc/hello");
  EXPECT_EQ(good.data_bytes, 6u);
  gz[gz.size() - 6] ^= 1;
  try {
    decode(gz);
    FAIL() << "a bad CRC was accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kIntegrity);
    EXPECT_NE(std::string(e.what()).find("layer x: corrupt gzip stream"), std::string::npos)
        << e.what();
  }
}
