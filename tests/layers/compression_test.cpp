#include "img2vm/layers/compression.hpp"

#include <gtest/gtest.h>

using namespace img2vm::layers;

TEST(Compression, FromMediaType) {
  EXPECT_EQ(compression_from_media_type("application/vnd.oci.image.layer.v1.tar"),
            Compression::kNone);
  EXPECT_EQ(compression_from_media_type("application/vnd.oci.image.layer.v1.tar+gzip"),
            Compression::kGzip);
  EXPECT_EQ(compression_from_media_type("application/vnd.oci.image.layer.v1.tar+zstd"),
            Compression::kZstd);
  EXPECT_EQ(
      compression_from_media_type("application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"),
      Compression::kGzip);
  EXPECT_EQ(compression_from_media_type("application/vnd.docker.image.rootfs.diff.tar.gzip"),
            Compression::kGzip);
  EXPECT_EQ(compression_from_media_type("application/vnd.oci.image.layer.v1.tar+bzip2"),
            std::nullopt);
  EXPECT_EQ(compression_from_media_type("application/vnd.oci.image.config.v1+json"), std::nullopt);
  EXPECT_EQ(compression_from_media_type(""), std::nullopt);
}

TEST(Compression, SniffMagic) {
  EXPECT_EQ(sniff_compression(std::string("\x1f\x8b\x08\x00", 4)), Compression::kGzip);
  EXPECT_EQ(sniff_compression(std::string("\x28\xb5\x2f\xfd\x00", 5)), Compression::kZstd);
  EXPECT_EQ(sniff_compression("ustar"), Compression::kNone);
  EXPECT_EQ(sniff_compression(std::string("\x1f", 1)), Compression::kNone);
  EXPECT_EQ(sniff_compression(""), Compression::kNone);
  EXPECT_EQ(to_string(Compression::kZstd), "zstd");
}
