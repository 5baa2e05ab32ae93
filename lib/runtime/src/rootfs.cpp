#include "img2vm/runtime/rootfs.hpp"

#include <fcntl.h>

#include <cstdlib>

#include "img2vm/base/digest.hpp"
#include "img2vm/base/error.hpp"
#include "img2vm/base/fd.hpp"
#include "img2vm/base/version.hpp"
#include "locate.hpp"

namespace img2vm::runtime {

namespace fs = std::filesystem;

fs::path find_init_binary() {
  return detail::locate(
      "IMG2VM_INIT", "init binary",
      {detail::beside_own_install("img2vm-init"),
       fs::path(IMG2VM_INSTALL_LIBEXECDIR) / "img2vm-init", fs::path(IMG2VM_BUILD_INIT)},
      "the guest init (img2vm-init) is missing: build the img2vm-init target or set IMG2VM_INIT");
}

rootfs::ImageInput image_input(const registry::ImageSource& src, const fs::path& scratch,
                               const std::atomic<bool>* cancel) {
  rootfs::ImageInput in;
  in.config_json = src.config_bytes();
  in.manifest_digest = src.manifest_digest();
  for (const registry::Descriptor& d : src.manifest().layers) {
    std::optional<fs::path> path = src.blob_path(d);
    if (!path) {
      // Copy the verified stream to a scratch file (docker-archive keeps layers inside its tar).
      fs::path p = scratch / d.digest.hex();
      UniqueFd out = open_file(p, O_WRONLY | O_CREAT | O_TRUNC, 0600);
      auto reader = src.open_blob(d);
      std::string buf(1 << 20, '\0');
      for (size_t n; (n = reader->read(buf.data(), buf.size())) > 0;) {
        if (cancel && cancel->load(std::memory_order_relaxed))
          throw Error(ErrorKind::kIo, "layer " + d.digest.str() + ": cancelled");
        write_all(out.get(), {buf.data(), n}, p.string());
      }
      path = p;
    }
    in.layers.push_back(layers::LayerSource::from_file(d.media_type, d.digest, d.size, *path));
  }
  return in;
}

rootfs::RootfsCache rootfs_cache(const registry::Store& store) {
  return rootfs::RootfsCache(store.home() / "rootfs");
}

rootfs::CacheKey rootfs_cache_key(const registry::ImageSource& src, const fs::path& init,
                                  const RootfsOptions& o, const fs::path& digests) {
  auto text = [](const std::optional<uint64_t>& v) {
    return v ? std::to_string(*v) : std::string();
  };
  return {src.manifest_digest().str(), src.platform().str(),
          init.empty()      ? ""
          : digests.empty() ? sha256_file(init).str()
                            : sha256_file_remembered(init, digests).str(),
          std::string(version()),
          text(o.size) + "\n" + text(o.extra_space) + "\n" + text(o.max_size) + "\n"};
}

namespace {

// The convert options for `o`, writing to `output`.
rootfs::ConvertOptions convert_options(const RootfsOptions& o, const fs::path& init,
                                       const fs::path& output) {
  rootfs::ConvertOptions c;
  c.output = output;
  if (o.size) c.size = *o.size;
  if (o.extra_space) c.extra_space = *o.extra_space;
  if (o.max_size) c.max_size = *o.max_size;
  c.init_binary = init;
  c.progress = o.hooks.progress;
  c.cancel = o.hooks.cancel;
  return c;
}

fs::path init_for(const RootfsOptions& o) {
  if (!o.inject_init) return {};
  return o.init_binary.empty() ? find_init_binary() : o.init_binary;
}

rootfs::ConvertResult run_convert(const registry::ImageSource& src, const rootfs::ConvertOptions& c,
                                  const RootfsOptions& o) {
  TempDir scratch("img2vm-convert");
  return rootfs::convert(image_input(src, scratch.path(), o.hooks.cancel), c);
}

}  // namespace

RootfsResult convert_to_cache(const registry::Store& store, const registry::ImageSource& src,
                              const RootfsOptions& o) {
  const fs::path init = init_for(o);
  rootfs::RootfsCache cache = rootfs_cache(store);
  rootfs::CacheKey key = rootfs_cache_key(src, init, o, store.home() / "file-digests");
  fs::create_directories(cache.dir());
  RootfsResult r;
  r.path = cache.path_for(key);
  if (cache.lookup(key)) {
    r.cached = true;
    if (!fs::exists(fs::path(r.path).replace_extension(".json")))
      cache.record(key);  // made by an older img2vm
    return r;
  }
  r.convert = run_convert(src, convert_options(o, init, r.path), o);
  cache.record(key);
  return r;
}

RootfsResult convert_to_path(const registry::ImageSource& src, const fs::path& output,
                             const RootfsOptions& o) {
  if (output.empty()) throw Error(ErrorKind::kInvalidArgument, "convert: no output path given");
  RootfsResult r;
  r.path = output;
  r.convert = run_convert(src, convert_options(o, init_for(o), output), o);
  return r;
}

}  // namespace img2vm::runtime
