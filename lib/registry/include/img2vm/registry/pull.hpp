// Pulling an image into the store from a registry or a local source, with concurrent,
// verified, resumable blob downloads.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <string>

#include "img2vm/registry/client.hpp"
#include "img2vm/registry/manifest.hpp"
#include "img2vm/registry/store.hpp"

namespace img2vm::registry {

// Progress of a pull, reported through PullOptions.
struct PullEvent {
  // What happened.
  enum class Kind {
    kResolved,    // manifest known: digest, platform, `total` = bytes of all blobs
    kBlobStart,   // a blob download starts (`current` = bytes resumed from a partial file)
    kProgress,    // `current` of `total` bytes of blob `digest`
    kBlobDone,    // blob verified and stored
    kBlobCached,  // blob already in the store
    kDone,        // image stored under `name`
  };
  Kind kind;
  std::string name;
  Digest digest;
  std::string media_type;
  uint64_t current = 0, total = 0;
  std::string platform;
};

// What to pull (platform), how (client, parallel downloads) and whom to tell.
struct PullOptions {
  Platform platform = host_platform();
  int jobs = 4;  // concurrent blob downloads
  ClientOptions client;
  // Called from worker threads, serialized by pull().
  std::function<void(const PullEvent&)> progress;
  // When set and it becomes true (e.g. from a SIGINT handler), the pull stops at the next chunk
  // and throws Error(kIo, "... interrupted"): partial downloads stay in the store's ingest
  // directory and the next pull resumes them; nothing half-done enters the store.
  const std::atomic<bool>* interrupt = nullptr;
};

// What a pull stored.
struct PullResult {
  std::string name;        // the store entry
  Digest manifest_digest;  // the image manifest
  Platform platform;
  uint64_t bytes_downloaded = 0;
  uint64_t size = 0;        // config + layers
  bool up_to_date = false;  // nothing was downloaded
};

// `spec`: a registry reference (docker:// optional), "oci:DIR[:TAG]" or
// "docker-archive:FILE[:REF]".
PullResult pull(Store& store, const std::string& spec, const PullOptions& opts = {});

}  // namespace img2vm::registry
