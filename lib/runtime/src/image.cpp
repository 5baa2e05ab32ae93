#include "img2vm/runtime/image.hpp"

#include <map>
#include <mutex>

#include "img2vm/base/error.hpp"
#include "img2vm/registry/reference.hpp"

namespace img2vm::runtime {

registry::PullResult pull(registry::Store& store, const std::string& ref,
                          const ImageOptions& options) {
  registry::PullOptions o;
  o.platform = options.platform;
  o.jobs = options.jobs;
  o.client = options.client;
  o.interrupt = options.hooks.cancel;
  if (options.hooks.progress) {
    // The bytes of every blob, summed: pull() serializes its events, so no lock is needed.
    auto state = std::make_shared<std::pair<std::map<std::string, uint64_t>, uint64_t>>();
    o.progress = [state, progress = options.hooks.progress](const registry::PullEvent& e) {
      auto& [done, total] = *state;
      using K = registry::PullEvent::Kind;
      switch (e.kind) {
        case K::kResolved:
          total = e.total;
          break;
        case K::kBlobStart:
        case K::kProgress:
          done[e.digest.str()] = e.current;
          break;
        case K::kBlobDone:
        case K::kBlobCached:
          done[e.digest.str()] = e.current;
          break;
        case K::kDone:
          break;
      }
      uint64_t sum = 0;
      for (const auto& [d, n] : done) sum += n;
      progress("pull", std::min(sum, total), total);
    };
  }
  return registry::pull(store, ref, o);
}

std::unique_ptr<registry::ImageSource> resolve_image(registry::Store& store, const std::string& ref,
                                                     const ImageOptions& options) {
  if (registry::is_local_source(ref)) return registry::open_image_source(ref, options.platform);
  registry::Reference::parse(ref);  // a malformed reference fails here, before any lookup
  try {
    return registry::open_image(store, ref);
  } catch (const Error& e) {
    if (e.kind() != ErrorKind::kNotFound || !options.pull_missing) throw;
  }
  if (options.hooks.note) options.hooks.note(ref + " is not in the store; pulling it");
  registry::PullResult r = pull(store, ref, options);
  return registry::open_image(store, r.name);
}

}  // namespace img2vm::runtime
