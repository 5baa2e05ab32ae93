// Flattening an image's layers, wherever they come from, into one metadata Tree whose file data
// sits in spool files on disk.
//
//   std::vector<LayerSource> layers = ...;           // from the store, an OCI layout, a test
//   Flattened f = flatten(layers, {.max_bytes = 8ull << 30, .spool_dir = "/var/tmp"});
//   // f.tree: every path of the image; f.spool_fd(i): where Inode::spool == i keeps its bytes
//
// Each layer is read once as a stream: its compressed bytes are hashed (sha256) and counted
// while they are decoded, so a digest or size mismatch or a truncated blob fails naming the
// layer's digest; its decompressed content is hashed too, on the same thread, and must match
// the layer's diff_id. Layers are decoded in parallel (up to `threads`) and applied in order.
#pragma once

#include <atomic>
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
  // Required: the sha256 of the layer's uncompressed tar stream, the image config's
  // rootfs.diff_ids entry for this layer (rootfs::convert fills it in from the config).
  // Verified while decoding, as containerd and umoci do.
  Digest diff_id;
  // Opens the blob as a byte stream positioned at its start (a file, a pipe, a socket).
  std::function<UniqueFd()> open;

  // A LayerSource reading a local blob file.
  static LayerSource from_file(std::string media_type, Digest digest, uint64_t size,
                               std::filesystem::path path, Digest diff_id = {});
};

// The bounds, spool place and hooks of flatten().
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
  // When set and it becomes true (from any thread, or a signal handler), flatten stops within
  // one read of a layer blob and throws Error(kIo, "... cancelled"); the output fd is left for
  // the caller to discard (rootfs::convert removes its temporary file).
  const std::atomic<bool>* cancel = nullptr;

  // Optional: put the layers' file data into `fd` itself (an empty regular file, such as the
  // ext4 image being made) from byte `offset` (a multiple of `align`) on, in the aligned layout
  // of SpoolTarget, layer after layer in order with no gap: what a file system writer can then
  // adopt block for block without copying. The result is the same bytes however it is made:
  // by default each layer is decoded straight into a region of its own in `fd` and the regions
  // are then closed up with FALLOC_FL_COLLAPSE_RANGE; where the file system cannot collapse
  // (or `in_place` is false, or a layer outgrows its region) each layer goes to a spool file
  // that is then copied into place.
  struct Output {
    int fd = -1;
    uint64_t offset = 0;
    uint64_t align = 4096;
    bool in_place = true;
    uint64_t region = 0;  // bytes of `fd` per layer while decoding in place; 0: chosen here
  } output;
};

// The merged tree of an image's layers and the spools holding its file data.
struct Flattened {
  Tree tree;
  // Where the bytes of Inode::spool == i are: DataExtent::spool_offset o is byte base + o of
  // fd. Index 0 is unused; layer i (from 1) is spool i.
  struct Spool {
    int fd = -1;
    uint64_t base = 0;
  };
  std::vector<Spool> spools;
  std::vector<UniqueFd> owned;  // the spool files behind `spools` (unlinked)
  uint64_t spooled_bytes = 0;
  // With FlattenOptions::output: the layers' data fills [data_begin, data_end) of the output,
  // and whether it was decoded in place (rather than copied from spool files).
  uint64_t data_begin = 0, data_end = 0;
  bool in_place = false;

  // The descriptor of spool number `spool` (not owned).
  int spool_fd(uint32_t spool) const { return spools.at(spool).fd; }
  // Adds a spool of the caller's (for files that come from elsewhere); returns its index.
  uint32_t add_spool(UniqueFd fd, uint64_t base = 0);
};

// Errors name the layer ("layer 2/3 sha256:...: ..."): kUnsupported (media type, a diff_id
// that is not sha256), kIntegrity (digest/size mismatch, truncated or corrupt stream, magic not
// matching the media type, content compressed twice, and "layer N: diff_id mismatch: config
// says X, content is Y" with N counted from 1 at the bottom), kInvalidArgument (a layer
// without diff_id), kLimit (max_bytes), kIo.
Flattened flatten(const std::vector<LayerSource>& layers, const FlattenOptions& options);

// Live size of a tree: file data (holes excluded) plus 512 per inode, used for max_bytes.
uint64_t tree_cost(const Tree& tree);

}  // namespace img2vm::layers
