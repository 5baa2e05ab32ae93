// A layer's content (its decompressed tar stream) is what the image config's diff_id names:
// decode_tar hashes all of it, flatten refuses a layer whose content does not match, and a
// layer whose content is compressed again is refused with a message that says so.
#include <fcntl.h>
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "image_builder.hpp"
#include "img2vm/base/error.hpp"
#include "img2vm/base/fd.hpp"
#include "img2vm/layers/apply.hpp"
#include "img2vm/layers/flatten.hpp"

using namespace img2vm;
using namespace img2vm::layers;
using namespace img2vm::testing;
namespace fs = std::filesystem;

namespace {

constexpr LayerCompression kAll[] = {LayerCompression::kNone, LayerCompression::kGzip,
                                     LayerCompression::kZstd};

Compression to_compression(LayerCompression c) {
  switch (c) {
    case LayerCompression::kGzip:
      return Compression::kGzip;
    case LayerCompression::kZstd:
      return Compression::kZstd;
    case LayerCompression::kNone:
      break;
  }
  return Compression::kNone;
}

std::string media_type(LayerCompression c) {
  std::string mt = "application/vnd.oci.image.layer.v1.tar";
  if (c == LayerCompression::kGzip) mt += "+gzip";
  if (c == LayerCompression::kZstd) mt += "+zstd";
  return mt;
}

DecodedLayer decode(const std::string& blob, Compression c) {
  TempDir dir("img2vm-content-test");
  UniqueFd spool = open_file(dir.path() / "spool", O_RDWR | O_CREAT, 0600);
  return decode_tar(bytes_source(blob, 5000), c, spool.get(), {}, "layer x");
}

// The error decode_tar gives for `blob`, or "" when it decodes.
std::string decode_error(const std::string& blob, Compression c) {
  try {
    decode(blob, c);
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kIntegrity) << e.what();
    return e.what();
  }
  return "";
}

// Layer blobs written to files, flattened as one image.
class Image {
 public:
  LayerSource& add(const std::string& blob, const std::string& mt, Digest diff_id) {
    fs::path p = dir_.path() / std::to_string(sources_.size());
    write_file_atomic(p, blob);
    sources_.push_back(
        LayerSource::from_file(mt, Digest::sha256_of(blob), blob.size(), p, std::move(diff_id)));
    return sources_.back();
  }
  Flattened flatten(unsigned threads = 0) const {
    FlattenOptions o;
    o.spool_dir = dir_.path();
    o.threads = threads;
    return layers::flatten(sources_, o);
  }
  // The error flatten gives, or "" when it succeeds.
  std::string error(ErrorKind want = ErrorKind::kIntegrity, unsigned threads = 0) const {
    try {
      flatten(threads);
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), want) << e.what();
      return e.what();
    }
    return "";
  }

 private:
  TempDir dir_{"img2vm-content-test"};
  std::vector<LayerSource> sources_;
};

}  // namespace

TEST(LayerContent, DiffIdIsTheDigestOfAllTheContent) {
  const std::string tar = make_layer_tar({file("etc/hello", "hello\n"), dir("var")});
  // Bytes after the tar's end-of-archive blocks are content too (containerd hashes them).
  const std::string padded = tar + std::string(10240, '\0') + "trailing bytes";
  for (LayerCompression c : kAll) {
    for (const std::string* content : {&tar, &padded}) {
      DecodedLayer d = decode(compress_bytes(*content, c), to_compression(c));
      ASSERT_EQ(d.entries.size(), 2u);
      EXPECT_EQ(d.diff_id, Digest::sha256_of(*content)) << media_type(c);
    }
  }
  // Several gzip members or zstd frames make one content.
  const std::string half = tar.substr(0, 1536);
  for (LayerCompression c : {LayerCompression::kGzip, LayerCompression::kZstd}) {
    std::string blob = compress_bytes(half, c) + compress_bytes(tar.substr(half.size()), c);
    EXPECT_EQ(decode(blob, to_compression(c)).diff_id, Digest::sha256_of(tar)) << media_type(c);
  }
  // An empty layer's diff_id is that of no bytes.
  EXPECT_EQ(decode("", Compression::kNone).diff_id, Digest::sha256_of(""));
}

TEST(LayerContent, CompressedTwiceIsNamed) {
  const std::string tar = make_layer_tar({file("etc/hello", "hello\n")});
  struct Case {
    LayerCompression outer, inner;
    const char* says;
  } cases[] = {
      {LayerCompression::kGzip, LayerCompression::kGzip, "its gzip content is gzip again"},
      {LayerCompression::kGzip, LayerCompression::kZstd, "its gzip content is zstd, not a tar"},
      {LayerCompression::kZstd, LayerCompression::kGzip, "its zstd content is gzip, not a tar"},
      {LayerCompression::kZstd, LayerCompression::kZstd, "its zstd content is zstd again"},
  };
  for (const Case& k : cases) {
    std::string blob = compress_bytes(compress_bytes(tar, k.inner), k.outer);
    std::string e = decode_error(blob, to_compression(k.outer));
    EXPECT_NE(e.find("layer x is compressed twice: "), std::string::npos) << e;
    EXPECT_NE(e.find(k.says), std::string::npos) << e;
  }
  // A plain tar that is merely odd is not called compressed.
  std::string e = decode_error(compress_bytes(std::string(2000, 'j'), LayerCompression::kGzip),
                               Compression::kGzip);
  EXPECT_NE(e.find("corrupt or truncated layer"), std::string::npos) << e;
}

TEST(LayerContent, FlattenChecksEveryLayersDiffId) {
  const std::string tars[] = {make_layer_tar({file("a", "one")}),
                              make_layer_tar({file("b", "two")}),
                              make_layer_tar({file("c", "three")})};
  // Correct diff_ids: the image flattens, whatever the compression and however many threads.
  {
    Image img;
    for (size_t i = 0; i < 3; ++i)
      img.add(compress_bytes(tars[i], kAll[i]), media_type(kAll[i]), Digest::sha256_of(tars[i]));
    Flattened f = img.flatten();
    EXPECT_EQ(f.tree.root->children.size(), 3u);
  }
  // One wrong diff_id, in each position and each compression: the error names the layer
  // (counted from 1 at the bottom) and both digests.
  const Digest wrong = Digest::sha256_of("not the content");
  for (size_t bad = 0; bad < 3; ++bad) {
    for (unsigned threads : {1u, 3u}) {
      Image img;
      for (size_t i = 0; i < 3; ++i)
        img.add(compress_bytes(tars[i], kAll[i]), media_type(kAll[i]),
                i == bad ? wrong : Digest::sha256_of(tars[i]));
      EXPECT_EQ(img.error(ErrorKind::kIntegrity, threads),
                "layer " + std::to_string(bad + 1) + ": diff_id mismatch: config says " +
                    wrong.str() + ", content is " + Digest::sha256_of(tars[bad]).str());
    }
  }
  // The diff_id of the compressed blob is not the content's either.
  Image img;
  std::string gz = compress_bytes(tars[0], LayerCompression::kGzip);
  img.add(gz, media_type(LayerCompression::kGzip), Digest::sha256_of(gz));
  EXPECT_NE(img.error().find("layer 1: diff_id mismatch"), std::string::npos);
}

TEST(LayerContent, ADamagedBlobIsReportedAsSuchNotAsADiffIdMismatch) {
  const std::string tar = make_layer_tar({file("a", "content")});
  const std::string other = make_layer_tar({file("a", "CONTENT")});
  Image img;
  LayerSource& s = img.add(compress_bytes(tar, LayerCompression::kGzip),
                           media_type(LayerCompression::kGzip), Digest::sha256_of(tar));
  s.digest = Digest::sha256_of(compress_bytes(other, LayerCompression::kGzip));
  EXPECT_NE(img.error().find("digest mismatch: the blob's content hashes to"), std::string::npos)
      << img.error();
}

TEST(LayerContent, EveryLayerNeedsASha256DiffId) {
  const std::string tar = make_layer_tar({file("a", "content")});
  {
    Image img;
    img.add(tar, media_type(LayerCompression::kNone), Digest::sha256_of(tar));
    img.add(tar, media_type(LayerCompression::kNone), Digest());
    EXPECT_NE(img.error(ErrorKind::kInvalidArgument).find("layer 2/2 "), std::string::npos);
    EXPECT_NE(img.error(ErrorKind::kInvalidArgument).find("no diff_id given"), std::string::npos);
  }
  Image img;
  img.add(tar, media_type(LayerCompression::kNone),
          Digest::parse("sha512:" + std::string(128, 'a')));
  EXPECT_NE(img.error(ErrorKind::kUnsupported).find("is not sha256"), std::string::npos);
}

TEST(LayerContent, FlattenRefusesALayerCompressedTwiceWhateverItsMediaType) {
  const std::string tar = make_layer_tar({file("a", "content")});
  const std::string inner = compress_bytes(tar, LayerCompression::kGzip);
  const std::string blob = compress_bytes(inner, LayerCompression::kGzip);
  // As `umoci raw add-layer` makes it from a .tar.gz: the diff_id is that of the .tar.gz.
  for (LayerCompression declared : {LayerCompression::kGzip, LayerCompression::kNone}) {
    Image img;
    img.add(blob, media_type(declared), Digest::sha256_of(inner));
    std::string e = img.error();
    EXPECT_NE(e.find("layer 1/1 sha256:"), std::string::npos) << e;
    EXPECT_NE(e.find("is compressed twice: its gzip content is gzip again"), std::string::npos)
        << e;
  }
}
