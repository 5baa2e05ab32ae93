// ZstdReader (libzstd streaming) against frames written by libzstd's compressor: contents,
// chunking on both sides, concatenated and skippable frames, checksums, the window limit, and
// damage of every kind.
#include "unzstd.hpp"

#include <gtest/gtest.h>
#include <zstd.h>

#include <stdexcept>
#include <string>
#include <vector>

#include "decoder_testing.hpp"
#include "image_builder.hpp"
#include "img2vm/base/error.hpp"

using namespace img2vm;
using namespace img2vm::layers;
using img2vm::testing::sample_data;

namespace {

struct FreeCctx {
  void operator()(ZSTD_CCtx* c) const { ZSTD_freeCCtx(c); }
};

// One zstd frame of `data`. `window_log` 0: the compressor's choice; `pledge`: the frame header
// states the content size (else the window size alone bounds the decoder's memory).
std::string zstd_frame(const std::string& data, int level = 3, bool checksum = true,
                       int window_log = 0, bool pledge = true) {
  std::unique_ptr<ZSTD_CCtx, FreeCctx> c(ZSTD_createCCtx());
  ZSTD_CCtx_setParameter(c.get(), ZSTD_c_compressionLevel, level);
  ZSTD_CCtx_setParameter(c.get(), ZSTD_c_checksumFlag, checksum ? 1 : 0);
  if (window_log) ZSTD_CCtx_setParameter(c.get(), ZSTD_c_windowLog, window_log);
  if (pledge) ZSTD_CCtx_setPledgedSrcSize(c.get(), data.size());
  std::string out(ZSTD_compressBound(data.size()) + 1024, '\0');
  ZSTD_outBuffer ob{out.data(), out.size(), 0};
  ZSTD_inBuffer ib{data.data(), data.size(), 0};
  // Unpledged, the input goes in before the end is announced, so that the compressor cannot
  // learn the size and shrink the window to it.
  size_t r = pledge ? 0 : ZSTD_compressStream2(c.get(), &ob, &ib, ZSTD_e_continue);
  if (!ZSTD_isError(r)) r = ZSTD_compressStream2(c.get(), &ob, &ib, ZSTD_e_end);
  if (ZSTD_isError(r) || r != 0) throw std::runtime_error("zstd compression did not finish");
  out.resize(ob.pos);
  return out;
}

// A skippable frame (magic 0x184D2A50..5F) holding `payload`.
std::string skippable_frame(const std::string& payload) {
  std::string f("\x50\x2a\x4d\x18", 4);
  uint32_t n = static_cast<uint32_t>(payload.size());
  for (int i = 0; i < 4; ++i) f.push_back(static_cast<char>((n >> (8 * i)) & 0xff));
  return f + payload;
}

std::string unzstd(const std::string& z, size_t in_chunk = 1 << 20, size_t out_chunk = 1 << 17,
                   uint64_t* bytes_in = nullptr) {
  ZstdReader r(img2vm::testing::bytes_source(z, in_chunk), "layer test");
  std::string out = img2vm::testing::read_to_end(r, out_chunk);
  char more;
  EXPECT_EQ(r.read(&more, 1), 0u);  // stays at the end
  EXPECT_EQ(r.bytes_out(), out.size());
  if (bytes_in) *bytes_in = r.bytes_in();
  return out;
}

// The error ZstdReader gives for `z`, or "" when it decodes.
std::string failure(const std::string& z) {
  try {
    unzstd(z);
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kIntegrity) << e.what();
    EXPECT_EQ(std::string(e.what()).rfind("layer test: corrupt zstd stream: ", 0), 0u) << e.what();
    return e.what();
  }
  return "";
}

}  // namespace

TEST(Unzstd, DecodesWhatLibzstdWroteWhateverTheChunking) {
  const std::string data = sample_data(3 << 20, 1);
  for (int level : {1, 3, 9}) {
    const std::string z = zstd_frame(data, level);
    uint64_t in = 0;
    EXPECT_TRUE(unzstd(z, 1 << 20, 1 << 17, &in) == data) << "level " << level;
    EXPECT_EQ(in, z.size());
  }
  const std::string z = zstd_frame(data, 3, false, 0, false);  // no checksum, no content size
  EXPECT_TRUE(unzstd(z, 4093, 65521) == data);
  const std::string small = sample_data(40000, 2);
  const std::string zs = zstd_frame(small);
  EXPECT_TRUE(unzstd(zs, 1, 1 << 17) == small);
  EXPECT_TRUE(unzstd(zs, 1 << 20, 1) == small);
  EXPECT_TRUE(unzstd(zs, 7, 13) == small);
}

TEST(Unzstd, ConcatenatedAndSkippableFramesAreOneStream) {
  const std::string a = sample_data(300000, 3), b = sample_data(5000, 4);
  const std::string z =
      zstd_frame(a) + skippable_frame("metadata") + zstd_frame(b, 1, false) + zstd_frame("");
  EXPECT_TRUE(unzstd(z) == a + b);
  EXPECT_TRUE(unzstd(z, 3, 11) == a + b);
  EXPECT_EQ(unzstd(zstd_frame("")), "");
}

TEST(Unzstd, DamageIsAnIntegrityErrorNamingTheLayer) {
  const std::string data = sample_data(200000, 5);
  const std::string z = zstd_frame(data);
  EXPECT_NE(failure(""), "");
  EXPECT_NE(failure(z.substr(0, 3)).find("truncated"), std::string::npos);
  for (size_t cut : {size_t{6}, z.size() / 2, z.size() - 1})
    EXPECT_NE(failure(z.substr(0, cut)).find("truncated"), std::string::npos) << "cut at " << cut;
  EXPECT_NE(failure(z + "trailing junk"), "");
  EXPECT_NE(failure(z + z.substr(0, 10)), "");  // a second frame cut short
  std::string bad_sum = z;
  bad_sum[bad_sum.size() - 1] ^= 1;  // the content checksum
  EXPECT_NE(failure(bad_sum).find("checksum"), std::string::npos);
  for (size_t i = 8; i + 4 < z.size(); i += z.size() / 29) {
    std::string flipped = z;
    flipped[i] ^= 0x10;
    EXPECT_NE(failure(flipped), "") << "flip at " << i;
  }
}

TEST(Unzstd, AWindowPastTheLimitIsRefused) {
  // The frame header states a 256 MiB window (no content size to shrink it): decoding it could
  // take that much memory, so it is refused before any is taken.
  const std::string z =
      zstd_frame(sample_data(100000, 6), 3, true, ZstdReader::kMaxWindowLog + 1, false);
  std::string e = failure(z);
  EXPECT_NE(e.find("window larger than 128 MiB"), std::string::npos) << e;
  // At the limit it decodes.
  const std::string ok =
      zstd_frame(sample_data(100000, 6), 3, true, ZstdReader::kMaxWindowLog, false);
  EXPECT_EQ(failure(ok), "");
}

TEST(Unzstd, SourceErrorsPassThrough) {
  ZstdReader r([](void*, size_t) -> size_t { throw Error(ErrorKind::kIo, "disk on fire"); },
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
