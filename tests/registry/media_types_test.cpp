#include "img2vm/registry/media_types.hpp"

#include <gtest/gtest.h>

namespace mt = img2vm::registry::media_type;

TEST(MediaTypes, Classifies) {
  EXPECT_TRUE(mt::is_image_manifest(mt::kOciManifest));
  EXPECT_TRUE(mt::is_image_manifest(mt::kDockerManifest));
  EXPECT_FALSE(mt::is_image_manifest(mt::kOciIndex));
  EXPECT_TRUE(mt::is_index(mt::kOciIndex));
  EXPECT_TRUE(mt::is_index(mt::kDockerManifestList));
  EXPECT_FALSE(mt::is_index(mt::kDockerManifest));
  EXPECT_TRUE(mt::is_schema1(mt::kDockerSchema1Signed));
  EXPECT_FALSE(mt::is_schema1(mt::kOciManifest));
}
