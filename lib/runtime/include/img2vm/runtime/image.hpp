// Resolving an image reference to an ImageSource, pulling it into a store when needed.
//
//   img2vm::registry::Store store(home);
//   img2vm::runtime::ImageOptions io;                  // platform, client settings, hooks
//   auto src = img2vm::runtime::resolve_image(store, "registry.local:5000/app:1", io);
#pragma once

#include <memory>
#include <string>

#include "img2vm/registry/client.hpp"
#include "img2vm/registry/image_source.hpp"
#include "img2vm/registry/manifest.hpp"
#include "img2vm/registry/pull.hpp"
#include "img2vm/registry/store.hpp"
#include "img2vm/runtime/hooks.hpp"

namespace img2vm::runtime {

// How images are found and pulled.
struct ImageOptions {
  registry::Platform platform = registry::host_platform();  // chosen from multi-platform images
  registry::ClientOptions
      client;                // TLS, credentials, insecure hosts (its `interrupt` is hooks.cancel)
  int jobs = 4;              // concurrent blob downloads
  bool pull_missing = true;  // resolve_image pulls a registry image the store lacks
  Hooks hooks;               // "pull" progress, cancellation, notes
};

// Pulls `ref` (a registry reference, oci:DIR[:TAG] or docker-archive:FILE[:REF]) into `store`.
// Cancelled, it throws Error(kIo, "... interrupted") and the store gains no image (partial
// blobs stay in its ingest directory for the next pull to resume).
registry::PullResult pull(registry::Store& store, const std::string& ref,
                          const ImageOptions& options = {});

// Opens `ref`: local sources (oci:, docker-archive:) in place, registry references from the
// store, pulled first when the store lacks them and options.pull_missing (else kNotFound).
std::unique_ptr<registry::ImageSource> resolve_image(registry::Store& store, const std::string& ref,
                                                     const ImageOptions& options = {});

}  // namespace img2vm::runtime
