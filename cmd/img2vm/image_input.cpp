#include "image_input.hpp"

#include <fcntl.h>

#include <cstdlib>
#include <iostream>

#include "img2vm/base/error.hpp"
#include "img2vm/registry/pull.hpp"
#include "img2vm/registry/reference.hpp"

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

}  // namespace img2vm::cli
