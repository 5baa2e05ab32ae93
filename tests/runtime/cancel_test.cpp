// Cancellation through the facade's hooks: a cancelled pull puts no image in the store; a
// cancelled convert (into the cache or to a path) leaves no file and no cache entry; a convert
// cancelled in the middle of a layer's stream stops there, not at the layer's end.
#include <gtest/gtest.h>
#include <sys/socket.h>

#include <atomic>
#include <thread>

#include "common.hpp"
#include "img2vm/rootfs/convert.hpp"
#include "img2vm/runtime/runtime.hpp"

using namespace img2vm;
using namespace img2vm::testing;
namespace fs = std::filesystem;

namespace {

TEST(RuntimeCancel, ACancelledPullPutsNoImageInTheStore) {
  Registry reg;
  BuiltImage img = build_image(three_layer_spec());
  push(reg, img, "rt/cancel:v1");
  const std::string ref = reg.host() + "/rt/cancel:v1";
  TempDir home("rt-home");
  registry::Store store(home.path());

  // Cancelled as soon as the manifest is known (the first progress report).
  std::atomic<bool> cancel{false};
  runtime::ImageOptions io = image_options();
  io.hooks.cancel = &cancel;
  io.hooks.progress = [&](std::string_view, uint64_t, uint64_t) { cancel = true; };
  Error e = error_of([&] { runtime::resolve_image(store, ref, io); });
  EXPECT_EQ(e.kind(), ErrorKind::kIo) << e.what();
  EXPECT_NE(std::string(e.what()).find("interrupted"), std::string::npos) << e.what();
  EXPECT_TRUE(store.list().empty());
  runtime::ImageOptions no_pull = image_options();
  no_pull.pull_missing = false;
  EXPECT_EQ(error_of([&] { runtime::resolve_image(store, ref, no_pull); }).kind(),
            ErrorKind::kNotFound);
  EXPECT_TRUE(files_under(home.path() / "rootfs").empty());

  // The same store pulls it completely afterwards.
  auto src = runtime::resolve_image(store, ref, image_options());
  EXPECT_EQ(src->manifest_digest(), img.manifest.digest);
}

TEST(RuntimeCancel, ACancelledConvertLeavesNoFileAndNoCacheEntry) {
  Registry reg;
  BuiltImage img = build_image(three_layer_spec());
  push(reg, img, "rt/convert:v1");
  TempDir home("rt-home");
  registry::Store store(home.path());
  auto src = runtime::resolve_image(store, reg.host() + "/rt/convert:v1", image_options());

  // Cancelled once the first of three layers is applied: into the cache, then to a path.
  std::atomic<bool> cancel{false};
  runtime::RootfsOptions ro;
  ro.hooks.cancel = &cancel;
  ro.hooks.progress = [&](std::string_view phase, uint64_t done, uint64_t) {
    if (phase == "layers" && done == 1) cancel = true;
  };
  Error in_cache = error_of([&] { runtime::convert_to_cache(store, *src, ro); });
  EXPECT_EQ(in_cache.kind(), ErrorKind::kIo) << in_cache.what();
  EXPECT_NE(std::string(in_cache.what()).find("cancelled"), std::string::npos) << in_cache.what();
  EXPECT_EQ(files_under(home.path() / "rootfs"), std::vector<std::string>{});

  cancel = false;
  TempDir out("rt-out");
  Error to_path = error_of([&] { runtime::convert_to_path(*src, out.path() / "app.ext4", ro); });
  EXPECT_NE(std::string(to_path.what()).find("cancelled"), std::string::npos) << to_path.what();
  EXPECT_EQ(files_under(out.path()), std::vector<std::string>{});

  // Set before the call: nothing is done at all.
  Error before = error_of([&] { runtime::convert_to_cache(store, *src, ro); });
  EXPECT_NE(std::string(before.what()).find("cancelled"), std::string::npos) << before.what();
  EXPECT_EQ(files_under(home.path() / "rootfs"), std::vector<std::string>{});

  // Not cancelled, the cache gets the entry and its sidecar.
  cancel = false;
  ro.hooks.progress = nullptr;
  runtime::RootfsResult r = runtime::convert_to_cache(store, *src, ro);
  EXPECT_FALSE(r.cached);
  EXPECT_EQ(files_under(home.path() / "rootfs").size(), 2u);
}

// A layer fed through a socket: half of it, then the cancel flag, then the rest. The convert
// must stop at its next read of the stream, while the rest is still being sent, naming the
// layer; the output directory stays empty.
TEST(RuntimeCancel, AConvertStopsWithinALayersStream) {
  ImageSpec spec;
  spec.layers.push_back(layer({file("big.bin", noise(8 << 20, 3))}, LayerCompression::kNone));
  BuiltImage img = build_image(spec);
  const BuiltLayer& l = img.layers[0];

  int sv[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
  UniqueFd reader(sv[0]), writer(sv[1]);
  std::atomic<bool> cancel{false};
  std::atomic<uint64_t> sent_after_cancel{0};
  std::thread feeder([&] {
    auto send_all = [&](const char* p, size_t n, bool counting) {
      while (n > 0) {
        ssize_t k = ::send(writer.get(), p, std::min<size_t>(n, 64 << 10), MSG_NOSIGNAL);
        if (k <= 0) return false;  // the reader is gone
        if (counting) sent_after_cancel += uint64_t(k);
        p += k;
        n -= size_t(k);
      }
      return true;
    };
    const size_t half = l.data.size() / 2;
    if (send_all(l.data.data(), half, false)) {
      cancel = true;
      send_all(l.data.data() + half, l.data.size() - half, true);
    }
    writer.reset();
  });

  rootfs::ImageInput in;
  in.config_json = img.config.data;
  in.manifest_digest = img.manifest.digest;
  layers::LayerSource src;
  src.media_type = l.media_type;
  src.digest = l.digest;
  src.size = l.size();
  auto fd = std::make_shared<UniqueFd>(std::move(reader));
  src.open = [fd] { return std::move(*fd); };
  in.layers.push_back(src);
  TempDir out("rt-out");
  rootfs::ConvertOptions co;
  co.output = out.path() / "x.ext4";
  co.in_place = false;
  co.cancel = &cancel;
  Error e = error_of([&] { rootfs::convert(in, co); });
  feeder.join();
  EXPECT_EQ(e.kind(), ErrorKind::kIo) << e.what();
  EXPECT_NE(std::string(e.what()).find("layer 1/1 " + l.digest.str() + ": cancelled"),
            std::string::npos)
      << e.what();
  // It stopped while the second half was on its way: not all of it was taken.
  EXPECT_LT(sent_after_cancel.load(), l.data.size() - l.data.size() / 2);
  EXPECT_EQ(files_under(out.path()), std::vector<std::string>{});
}

}  // namespace
