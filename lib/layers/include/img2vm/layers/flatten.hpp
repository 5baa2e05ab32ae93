// Flattening an image's layers, wherever they come from, into one metadata Tree whose file data
// sits in spool files on disk.
//
//   std::vector<LayerSource> layers = ...;           // from the store, an OCI layout, a test
//   Flattened f = flatten(layers, {.max_bytes = 8ull << 30, .spool_dir = "/var/tmp"});
//   // f.tree: every path of the image; f.spool_fd(i): where Inode::spool == i keeps its bytes
//
// Each layer is read once as a stream: its compressed bytes are hashed (sha256) and counted
// while libarchive decodes them, so a digest or size mismatch or a truncated blob fails naming
// the layer's digest. Layers are decoded in parallel (up to `threads`) and applied in order.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "img2vm/base/digest.hpp"
#include "img2vm/base/fd.hpp"
#include "img2vm/layers/tree.hpp"

namespace img2vm::layers {

// One layer of an image, independent of where it is stored.
struct LayerSource {
  std::string media_type;  // OCI or Docker layer media type; chooses the decompressor
  Digest digest;           // of the (compressed) blob, verified while reading
  uint64_t size = 0;       // of the (compressed) blob, verified while reading
  // Opens the blob as a byte stream positioned at its start (a file, a pipe, a socket).
  std::function<UniqueFd()> open;

  // A LayerSource reading a local blob file.
  static LayerSource from_file(std::string media_type, Digest digest, uint64_t size,
                               std::filesystem::path path);
};

struct FlattenOptions {
  // Bound on the uncompressed content of each layer and of the flattened tree (file data plus a
  // small per-entry cost): passing it stops reading at once with ErrorKind::kLimit.
  uint64_t max_bytes = UINT64_MAX;
  // Where the spool files go (unlinked at once; they vanish with the process). Default $TMPDIR
  // or /tmp. Put it on the output's file system for speed.
  std::filesystem::path spool_dir;
  unsigned threads = 0;  // layers decoded at once; 0: the number of cores
  // Called after each layer is applied: (layers done, layers total).
  std::function<void(size_t, size_t)> progress;
};

struct Flattened {
  Tree tree;
  std::vector<UniqueFd> spools;  // index = Inode::spool (0 unused, layer i+1 -> spools[i+1])
  uint64_t spooled_bytes = 0;
  int spool_fd(uint32_t spool) const { return spools.at(spool).get(); }
};

// Errors name the layer ("layer sha256:...: ..."): kUnsupported (media type), kIntegrity
// (digest/size mismatch, truncated or corrupt stream, magic not matching the media type),
// kLimit (max_bytes), kIo.
Flattened flatten(const std::vector<LayerSource>& layers, const FlattenOptions& options);

// Live size of a tree: file data (holes excluded) plus 512 per inode, used for max_bytes.
uint64_t tree_cost(const Tree& tree);

}  // namespace img2vm::layers
