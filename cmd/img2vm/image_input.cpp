#include "image_input.hpp"

#include <fcntl.h>

#include <cstdio>
#include <cstdlib>
#include <iostream>

#include "img2vm/base/digest.hpp"
#include "img2vm/base/error.hpp"
#include "img2vm/base/version.hpp"
#include "img2vm/registry/pull.hpp"
#include "img2vm/registry/reference.hpp"
#include "run_options.hpp"

namespace img2vm::cli {

namespace fs = std::filesystem;

std::unique_ptr<registry::ImageSource> resolve_image(registry::Store& store, const std::string& ref,
                                                     const registry::Platform& platform, bool quiet) {
  if (registry::is_local_source(ref)) return registry::open_image_source(ref, platform);
  registry::Reference::parse(ref);  // a malformed reference fails here, before any lookup
  try {
    return registry::open_image(store, ref);
  } catch (const Error& e) {
    if (e.kind() != ErrorKind::kNotFound) throw;
  }
  if (!quiet) std::cerr << "img2vm: " << ref << " is not in the store; pulling it\n";
  registry::PullOptions o;
  o.platform = platform;
  registry::PullResult r = registry::pull(store, ref, o);
  return registry::open_image(store, r.name);
}

rootfs::ImageInput image_input(const registry::ImageSource& src, const fs::path& scratch) {
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
      for (size_t n; (n = reader->read(buf.data(), buf.size())) > 0;) write_all(out.get(), {buf.data(), n}, p.string());
      path = p;
    }
    in.layers.push_back(layers::LayerSource::from_file(d.media_type, d.digest, d.size, *path));
  }
  return in;
}

fs::path init_binary() {
  if (const char* e = std::getenv("IMG2VM_INIT"); e && *e) {
    if (!fs::is_regular_file(e)) throw Error(ErrorKind::kNotFound, std::string("init binary ") + e + " (from IMG2VM_INIT) does not exist");
    return e;
  }
  for (const fs::path& p : {fs::path(IMG2VM_INSTALL_LIBEXECDIR) / "img2vm-init", fs::path(IMG2VM_BUILD_INIT)})
    if (fs::is_regular_file(p)) return p;
  throw Error(ErrorKind::kNotFound, "the guest init (img2vm-init) is missing: build the img2vm-init target or set IMG2VM_INIT");
}

namespace {

// The cache key covers everything that changes the bytes of the output.
rootfs::CacheKey cache_key(const registry::ImageSource& src, const fs::path& init, const RootfsArgs& a) {
  return {src.manifest_digest().str(), src.platform().str(), init.empty() ? "" : sha256_file(init).str(),
          std::string(version()), a.size + "\n" + a.extra_space + "\n" + a.max_size + "\n"};
}

}  // namespace

rootfs::RootfsCache rootfs_cache(const registry::Store& store) { return rootfs::RootfsCache(store.home() / "rootfs"); }

RootfsResult make_rootfs(const registry::Store& store, const registry::ImageSource& src, const RootfsArgs& a,
                         const fs::path& output, bool progress) {
  rootfs::ConvertOptions o;
  if (!a.size.empty()) o.size = parse_size("--size", a.size);
  if (!a.extra_space.empty()) o.extra_space = parse_size("--extra-space", a.extra_space);
  if (!a.max_size.empty()) o.max_size = parse_size("--max-size", a.max_size);
  if (!a.no_init) o.init_binary = init_binary();

  RootfsResult r;
  rootfs::RootfsCache cache = rootfs_cache(store);
  std::optional<rootfs::CacheKey> key;
  if (output.empty()) {
    key = cache_key(src, o.init_binary, a);
    fs::create_directories(cache.dir());
    o.output = cache.path_for(*key);
    r.cached = cache.lookup(*key).has_value();
  } else {
    o.output = output;
  }
  r.path = o.output;
  if (r.cached) {
    if (!fs::exists(fs::path(r.path).replace_extension(".json"))) cache.record(*key);  // made by an older img2vm
    return r;
  }
  if (progress) {
    o.progress = [](std::string_view phase, uint64_t done, uint64_t total) {
      std::fprintf(stderr, "\r%-6.*s %llu/%llu", static_cast<int>(phase.size()), phase.data(),
                   static_cast<unsigned long long>(done), static_cast<unsigned long long>(total));
      std::fflush(stderr);
    };
  }
  TempDir scratch("img2vm-convert");
  r.convert = rootfs::convert(image_input(src, scratch.path()), o);
  if (key) cache.record(*key);
  if (progress) std::fprintf(stderr, "\n");
  return r;
}

}  // namespace img2vm::cli
