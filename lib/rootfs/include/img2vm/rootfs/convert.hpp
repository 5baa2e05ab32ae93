// img2vm convert as a library: an image (from any source) flattened into a bootable ext4 file,
// rootless — no mkfs binary, no mount, no loop device.
//
//   img2vm::rootfs::ImageInput in;
//   in.config_json = <the image configuration blob>;
//   in.manifest_digest = <digest of the image manifest>;        // seeds UUID and hash seed
//   in.layers.push_back(img2vm::layers::LayerSource::from_file(media_type, digest, size, path));
//   img2vm::rootfs::ConvertOptions opt;
//   opt.output = "rootfs.ext4";
//   opt.init_binary = "/usr/lib/img2vm/init";                   // optional
//   img2vm::rootfs::ConvertResult r = img2vm::rootfs::convert(in, opt);
//
// The result holds the image's files exactly as `umoci unpack` would lay them out (see
// img2vm/layers/apply.hpp for the layer semantics and the path policy), plus /.img2vm/ (root,
// 0755) with config.json (to_json(runtime_config_from_image_config(config_json))) and, when
// given, the init as /.img2vm/init (0755). An image's own /.img2vm is replaced. /lost+found is
// added (0700 root) when the image has none, as mkfs does, so that e2fsck is content.
//
// File system: ext4, 4 KiB blocks, 256-byte inodes (inline xattrs, nanosecond and post-2038
// timestamps), extents, flex_bg, 64bit, huge_file, dir_nlink, dir_index, metadata_csum, no
// journal (the rootfs is copied per run and never needs replay; a VMM may add one with tune2fs)
// and no resize inode. The same input and options give a byte-identical file: the UUID and
// directory hash seed derive from the manifest digest, every timestamp is fixed.
//
// Every layer is verified while it is decoded: its blob against the descriptor's digest and
// size, its uncompressed content against the config's rootfs.diff_ids, which must list one
// digest per layer (bottom first). convert() sets each LayerSource::diff_id from the config;
// one the caller set already must agree with it.
//
// The output is written as a temporary file next to `output` and renamed over it only on
// success; on any error no file is left behind.
#pragma once

#include <atomic>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "img2vm/base/digest.hpp"
#include "img2vm/layers/flatten.hpp"

namespace img2vm::rootfs {

// An image independent of where it came from (registry store, OCI layout, docker-archive).
struct ImageInput {
  std::string config_json;  // the image configuration blob (its rootfs.diff_ids too)
  Digest manifest_digest;   // reproducibility seed; may be empty (then a fixed seed)
  std::vector<layers::LayerSource> layers;  // bottom first
};

// Where and how convert() writes the ext4: sizes, init, config, hooks.
struct ConvertOptions {
  std::filesystem::path output;  // required
  // Exact file system size in bytes (rounded up to 4 KiB); too small is an error (kLimit).
  std::optional<uint64_t> size;
  // Free space added to what the content needs when `size` is not given.
  uint64_t extra_space = 16ull << 20;
  // Free inodes added to what the content needs.
  uint64_t extra_inodes = 1024;
  // Upper bound on the file system and on each layer's uncompressed content (decompression
  // bombs stop as soon as they pass it). kLimit when exceeded.
  uint64_t max_size = 64ull << 30;
  // Injected as /.img2vm/init (0755) when not empty.
  std::filesystem::path init_binary;
  // Where layer data is spooled when it cannot be decoded straight into the output; default:
  // the output's directory.
  std::filesystem::path temp_dir;
  // Layer data is decoded straight into the output file where its file system can collapse
  // ranges (ext4, XFS), else through spool files in temp_dir: the output is the same bytes
  // either way. false forces the spool files; in_place_region (bytes, 0: automatic) is the
  // room each layer gets in the output while decoding in place (a layer that outgrows it makes
  // the conversion start again through spool files). Both are for tests.
  bool in_place = true;
  uint64_t in_place_region = 0;
  // The data of files that later layers removed or replaced is cut out of the output, the data
  // after it moving down: by shifting extents where the file system can collapse ranges, else
  // by copying. true copies even where it could collapse (the same bytes; for tests).
  bool compact_by_copy = false;
  unsigned threads = 0;  // layers decoded at once; 0: number of cores
  // Fixed timestamp for what the image does not date (superblock, /.img2vm, implicit dirs,
  // /lost+found), seconds since the epoch.
  int64_t timestamp = 0;
  // Progress: (phase, done, total); phases "layers" (layers applied) and "data" (bytes written).
  std::function<void(std::string_view, uint64_t, uint64_t)> progress;
  // When set and it becomes true (from any thread, or a signal handler), convert stops within
  // one read of a layer blob (or one file's data while writing ext4) and throws
  // Error(kIo, "... cancelled"), leaving no output file behind.
  const std::atomic<bool>* cancel = nullptr;
};

// What convert() wrote.
struct ConvertResult {
  std::filesystem::path output;
  uint64_t size_bytes = 0;  // of the ext4 file
  uint64_t inodes = 0;      // used
  uint64_t data_bytes = 0;  // file data written
  uint64_t layers = 0;
  bool data_in_place = false;  // the layers' data was decoded straight into the output
};

// Throws img2vm::Error naming the layer (digest) or file at fault; see layers::flatten for the
// layer errors (diff_id mismatch included), kIntegrity when the config's diff_ids do not
// number the layers, kLimit for max_size/size, kIo for the output.
ConvertResult convert(const ImageInput& image, const ConvertOptions& options);

// The rootfs.diff_ids of an image configuration blob, bottom layer first (empty when it has
// none). Throws Error(kInvalidArgument) when they are malformed.
std::vector<Digest> diff_ids_from_image_config(std::string_view config_json);

}  // namespace img2vm::rootfs
