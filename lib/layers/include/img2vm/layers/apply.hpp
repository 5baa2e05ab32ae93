// Decoding one layer's tar stream into entries (file data spooled to disk) and applying decoded
// layers in order to a Tree with the OCI layer semantics.
//
// Path policy (the same as containerd and umoci): every entry name is cleaned lexically as if it
// were rooted at "/" — leading "/" and "./" are dropped, "." components removed and ".." can never
// climb above the root (so "../../etc/x" and "/etc/x" both mean "etc/x"). The parent components
// are then resolved in the tree built so far, following symlinks as if chrooted into the image:
// an absolute link target restarts at the image root and ".." stops there, so an entry under a
// symlinked parent lands at the link's target inside the image and never outside it. The final
// component is never followed: an entry replaces a symlink, it does not write through it. A
// parent that is missing is created (0755 root:root, mtime 0); one that is neither a directory
// nor a symlink to one is an error. More than 255 symlinks in one resolution is an error.
//
// Bounds (hostile layers): an entry whose path in the image (its parents resolved) would be
// longer than kMaxPathBytes is refused (kLimit), as docker and containerd fail on it
// (ENAMETOOLONG) and the guest could not use it; so no directory is nested deeper than 2047.
// Resolving one entry may expand symlinks to at most kMaxLinkComponents path components, a
// whole layer to kMaxLayerLinkComponents (kLimit past either), so that a long link met again
// and again (x -> x/x/x/...) costs bounded time and memory.
//
// Layer semantics (image-spec layer.md): within one layer, the opaque markers
// ".wh..wh..opq" are applied first, then the whiteouts ".wh.NAME", then the layer's other entries
// in tar order — so whiteouts hide only lower layers wherever they appear in the tar. Other
// ".wh..wh.*" names (aufs internals) are ignored; ".wh.", ".wh.." and ".wh..." hide no name
// (the latter two would be the directory itself or its parent) and are errors. A directory entry
// over an existing directory updates its attributes (xattrs replaced) and keeps its contents;
// any other entry replaces what was at its name (a directory replaced by a file loses its whole
// subtree). A hardlink entry makes its name share the inode of its target, looked up in the tree
// as it is at that point (in this layer or an earlier one); a missing target or a directory
// target is an error. Sockets are skipped.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "img2vm/base/digest.hpp"
#include "img2vm/base/error.hpp"
#include "img2vm/base/fd.hpp"
#include "img2vm/layers/compression.hpp"
#include "img2vm/layers/tree.hpp"

namespace img2vm::layers {

// Longest path of a node in the image, in bytes with the leading "/": Linux's PATH_MAX (4096)
// less its terminating NUL.
inline constexpr size_t kMaxPathBytes = 4095;
// Path components that symlink targets may add while resolving one entry's parents / all the
// entries of one layer.
inline constexpr uint64_t kMaxLinkComponents = 65536;
inline constexpr uint64_t kMaxLayerLinkComponents = uint64_t{1} << 22;

// One entry of a decoded layer: a node, a hard link, a whiteout or an opaque marker.
struct LayerEntry {
  // What the entry does to the tree below it.
  enum class Kind : uint8_t { kNode, kHardlink, kWhiteout, kOpaque };
  Kind kind = Kind::kNode;
  std::string path;    // cleaned, relative to the root ("" is the root); for kOpaque the dir
  std::string target;  // kHardlink: the cleaned target path
  Inode node;          // kNode: type, attributes, data extents (children empty)
};

// A layer's entries in tar order, with their file data in the spool.
struct DecodedLayer {
  std::vector<LayerEntry> entries;
  Digest diff_id;           // sha256 of the layer's whole content (the uncompressed tar stream)
  uint64_t data_bytes = 0;  // file data spooled
  uint64_t spool_bytes =
      0;  // spool bytes used from SpoolTarget::start (aligned: a multiple of align)
};

// Where decode_tar writes regular files' data. Spool offset `o` (DataExtent::spool_offset) is
// byte `base + o` of `fd`; the layer's data starts at spool offset `start`.
//
// With `align` > 1 (a power of two) the data is laid out in blocks of `align` bytes, as a file
// system would store it: a file's data runs whose blocks touch or overlap (the holes between
// them shorter than a block) share one range of consecutive spool blocks, with each byte at a
// spool offset congruent to its file offset modulo `align`; a file's first run, and a run after
// a longer hole, starts at the next block boundary. So no spool block holds two files' bytes,
// and the bytes between runs inside a range are left unwritten (zeros in a fresh file).
struct SpoolTarget {
  int fd = -1;
  uint64_t base = 0;
  uint64_t start = 0;
  uint64_t align = 1;
  // Spool bytes the layer may use (from offset 0): crossing it throws SpoolFull.
  uint64_t limit = UINT64_MAX;
  // > 0: ask the kernel to start writing the spool to disk every this many bytes.
  uint64_t writeback_step = 0;
};

// Thrown by decode_tar when the layer's data does not fit SpoolTarget::limit (or past the
// largest offset the spool's file system allows).
class SpoolFull : public Error {
 public:
  // A kLimit error with `message`.
  explicit SpoolFull(std::string message) : Error(ErrorKind::kLimit, std::move(message)) {}
};

// Cleans a tar entry name as described above; returns the components.
std::vector<std::string> clean_path(std::string_view name);

// The bounds decode_tar enforces on one layer.
struct DecodeLimits {
  // Uncompressed bytes (file data plus 512 per entry plus name lengths) one layer may produce.
  uint64_t max_bytes = UINT64_MAX;
  const std::atomic<bool>* cancel = nullptr;  // checked while reading; throws when set
};

// Reads a tar stream (compressed per `compression`: gzip through GzipReader, zstd through
// ZstdReader) with libarchive from `read` (see ReadFn). Regular files' data goes to `spool` as
// described above. The whole content (the decompressed stream, including what follows the
// tar's end-of-archive blocks) is read and its sha256 returned as DecodedLayer::diff_id; the
// caller compares it with the image's. `what` names the layer in every error
// ("layer sha256:..."). Errors: kIntegrity (corrupt tar or compressed stream, content that is
// compressed again rather than a tar, an invalid whiteout), kLimit (max_bytes passed, a path
// past PATH_MAX, symlink expansion past its budget; SpoolFull), kIo.
DecodedLayer decode_tar(const ReadFn& read, Compression compression, const SpoolTarget& spool,
                        const DecodeLimits& limits, std::string_view what);

// The same, appending the data back to back at the current end of `spool_fd` (found with lseek).
DecodedLayer decode_tar(const ReadFn& read, Compression compression, int spool_fd,
                        const DecodeLimits& limits, std::string_view what);

// Applies one decoded layer (index `layer` >= 1, ascending) to the tree; `spool` is stored in
// each regular file's Inode::spool. Entries are moved out of `decoded`. Errors name the layer
// (`what`) and the entry: kIntegrity (rules above), kLimit (the bounds above).
void apply_layer(Tree& tree, DecodedLayer& decoded, uint32_t layer, uint32_t spool,
                 std::string_view what);

}  // namespace img2vm::layers
