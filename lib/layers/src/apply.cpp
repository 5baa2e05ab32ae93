#include "img2vm/layers/apply.hpp"

#include <archive.h>
#include <archive_entry.h>
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <deque>
#include <memory>
#include <optional>

#include "gunzip.hpp"
#include "img2vm/base/error.hpp"
#include "prefetch.hpp"
#include "unzstd.hpp"

namespace img2vm::layers {

std::string_view to_string(NodeType t) noexcept {
  switch (t) {
    case NodeType::kFile:
      return "file";
    case NodeType::kDir:
      return "directory";
    case NodeType::kSymlink:
      return "symlink";
    case NodeType::kCharDev:
      return "character device";
    case NodeType::kBlockDev:
      return "block device";
    case NodeType::kFifo:
      return "fifo";
  }
  return "?";
}

Tree::Tree() : root(std::make_shared<Inode>()) {
  root->type = NodeType::kDir;
  root->mode = 0755;
}

Inode::~Inode() {
  if (children.empty()) return;
  // Each inode popped here is released with no children left, so its own destructor returns at
  // once; inodes still held elsewhere (hard links, a caller's pointer) are only let go of.
  std::vector<std::shared_ptr<Inode>> todo;
  auto take = [&todo](std::map<std::string, Dentry, std::less<>>& kids) {
    for (auto& [name, d] : kids)
      if (d.inode) todo.push_back(std::move(d.inode));
    kids.clear();
  };
  take(children);
  while (!todo.empty()) {
    std::shared_ptr<Inode> n = std::move(todo.back());
    todo.pop_back();
    if (n.use_count() == 1) take(n->children);
  }
}

std::vector<std::string> clean_path(std::string_view name) {
  std::vector<std::string> out;
  size_t i = 0;
  while (i <= name.size()) {
    size_t j = name.find('/', i);
    if (j == std::string_view::npos) j = name.size();
    std::string_view c = name.substr(i, j - i);
    if (c.empty() || c == ".") {
    } else if (c == "..") {
      if (!out.empty()) out.pop_back();
    } else {
      out.emplace_back(c);
    }
    i = j + 1;
  }
  return out;
}

namespace {

// A name for an error message: in quotes, on one line (control bytes shown as '?'), and cut
// short when long (a hostile entry name may be megabytes).
std::string quote(std::string_view name) {
  constexpr size_t kShown = 160;
  std::string s = "\"";
  for (char ch : name.substr(0, kShown))
    s += (static_cast<unsigned char>(ch) < 0x20 || ch == 0x7f) ? '?' : ch;
  s += '"';
  if (name.size() > kShown) s += "... (" + std::to_string(name.size()) + " bytes)";
  return s;
}

std::string join(const std::vector<std::string>& parts, size_t n) {
  std::string s;
  for (size_t i = 0; i < n; ++i) {
    if (i) s += '/';
    s += parts[i];
  }
  return s;
}

// ---------------------------------------------------------------- decoding

struct ArchiveFree {
  void operator()(archive* a) const { archive_read_free(a); }
};

// Writes a layer's file data at the positions decode_tar picks, through a 1 MiB buffer.
class Spool {
 public:
  Spool(const SpoolTarget& t, std::string_view what)
      : t_(t), what_(what), pos_(t.start), kicked_(t.start) {
    buf_.reserve(kCap);
  }
  uint64_t end() const { return pos_ + buf_.size(); }
  // The next bytes go to spool offset `at` (>= end()). A short gap (the rest of a file's last
  // block before the next file's aligned start) is zeros in the buffer, so that the data of many
  // small files goes out in one write instead of one each; a longer one stays unwritten.
  void seek(uint64_t at) {
    if (at == end()) return;
    if (at > end() && at - end() < kMaxFill && buf_.size() + (at - end()) < kCap) {
      buf_.append(at - end(), '\0');
      return;
    }
    flush();
    pos_ = at;
  }
  void append(const void* p, size_t n) {
    if (n > t_.limit || end() > t_.limit - n)
      throw SpoolFull(what_ + ": the layer's data does not fit the " + std::to_string(t_.limit) +
                      " bytes of spool space it was given");
    const char* s = static_cast<const char*>(p);
    while (n) {
      size_t k = std::min(n, kCap - buf_.size());
      buf_.append(s, k);
      s += k;
      n -= k;
      if (buf_.size() == kCap) flush();
    }
  }
  // Writes out the buffer; `last`: the layer is complete (writeback is started for all of it).
  void flush(bool last = false) {
    size_t done = 0;
    while (done < buf_.size()) {
      ssize_t w = ::pwrite(t_.fd, buf_.data() + done, buf_.size() - done,
                           static_cast<off_t>(t_.base + pos_ + done));
      if (w < 0) {
        if (errno == EINTR) continue;
        if (errno == EFBIG) throw SpoolFull(what_ + ": the spool file cannot grow that large");
        throw_errno(what_ + ": cannot write the spool file");
      }
      done += static_cast<size_t>(w);
    }
    pos_ += buf_.size();
    buf_.clear();
    if (t_.writeback_step && pos_ > kicked_ && (last || pos_ - kicked_ >= t_.writeback_step)) {
      // A hint, so that the disk works while decoding goes on: failure changes nothing.
      (void)::sync_file_range(t_.fd, static_cast<off_t>(t_.base + kicked_),
                              static_cast<off_t>(pos_ - kicked_), SYNC_FILE_RANGE_WRITE);
      kicked_ = pos_;
    }
  }

 private:
  static constexpr size_t kCap = 1 << 20;
  static constexpr uint64_t kMaxFill = 64 << 10;
  SpoolTarget t_;
  std::string what_;
  uint64_t pos_;
  uint64_t kicked_;
  std::string buf_;
};

uint64_t round_up(uint64_t n, uint64_t a) { return (n + a - 1) / a * a; }

// A layer's content (its decompressed tar stream) as libarchive reads it: produced on a
// thread of its own (Prefetcher), hashed and counted here, its first bytes kept for sniffing.
class ContentReader {
 public:
  explicit ContentReader(ReadFn source) : fetch_(std::move(source)) {}
  // The next piece of content, valid until the next call; empty at the end.
  std::string_view next() {
    std::string_view s = fetch_.next();
    sha_.update(s);
    if (head_.size() < kHead) head_.append(s.substr(0, kHead - head_.size()));
    return s;
  }
  std::string_view head() const { return head_; }
  uint64_t bytes() const { return sha_.bytes(); }
  Digest digest() { return sha_.finish(); }

 private:
  static constexpr size_t kHead = 8;
  Prefetcher fetch_;
  Sha256 sha_;
  std::string head_;
};

// libarchive's view of the content; an exception from it is kept for after libarchive gives up.
struct ReadCtx {
  ContentReader* content;
  std::exception_ptr exc;
};

la_ssize_t read_cb(archive* a, void* ud, const void** out) {
  auto* c = static_cast<ReadCtx*>(ud);
  try {
    std::string_view s = c->content->next();
    *out = s.data();
    return static_cast<la_ssize_t>(s.size());
  } catch (...) {
    c->exc = std::current_exception();
    archive_set_error(a, EIO, "read failed");
    return -1;
  }
}

}  // namespace

DecodedLayer decode_tar(const ReadFn& read, Compression compression, int spool_fd,
                        const DecodeLimits& limits, std::string_view what) {
  off_t end = ::lseek(spool_fd, 0, SEEK_END);
  if (end < 0) throw_errno(std::string(what) + ": spool file");
  SpoolTarget t;
  t.fd = spool_fd;
  t.start = static_cast<uint64_t>(end);
  return decode_tar(read, compression, t, limits, what);
}

namespace {

// The node type of a tar entry; nullopt for sockets and unknown types (not part of a rootfs).
std::optional<NodeType> node_type(archive_entry* ae) {
  static constexpr std::pair<unsigned, NodeType> kTypes[] = {
      {AE_IFREG, NodeType::kFile},     {AE_IFDIR, NodeType::kDir},
      {AE_IFLNK, NodeType::kSymlink},  {AE_IFCHR, NodeType::kCharDev},
      {AE_IFBLK, NodeType::kBlockDev}, {AE_IFIFO, NodeType::kFifo}};
  const unsigned t = archive_entry_filetype(ae);
  for (const auto& [ae_type, type] : kTypes)
    if (t == ae_type) return type;
  return std::nullopt;
}

// One layer's decoding (decode_tar): its content decompressed and hashed, its tar entries read
// into a DecodedLayer, regular files' data written to the spool.
class TarDecoder {
 public:
  TarDecoder(const ReadFn& read_in, Compression compression, const SpoolTarget& target,
             const DecodeLimits& limits, std::string what)
      : compression_(compression),
        target_(target),
        limits_(limits),
        what_(std::move(what)),
        align_(target.align ? target.align : 1) {
    if (align_ & (align_ - 1))
      throw Error(ErrorKind::kInternal, "decode_tar: alignment is not a power of two");
    // The layer's content, its tar stream, is decompressed here (gzip by isa-l, zstd by
    // libzstd), never by libarchive, which would silently peel a second compression too.
    ReadFn decompressed;
    switch (compression) {
      case Compression::kGzip:
        gz_.emplace(read_in, what_);
        decompressed = [this](void* b, size_t n) { return gz_->read(b, n); };
        break;
      case Compression::kZstd:
        zs_.emplace(read_in, what_);
        decompressed = [this](void* b, size_t n) { return zs_->read(b, n); };
        break;
      case Compression::kNone:
        decompressed = read_in;
        break;
    }
    content_.emplace(std::move(decompressed));
    ctx_.content = &*content_;
    a_.reset(archive_read_new());
    if (!a_) throw Error(ErrorKind::kInternal, what_ + ": archive_read_new failed");
    archive_read_support_format_tar(a_.get());
  }

  DecodedLayer run() {
    if (archive_read_open(a_.get(), &ctx_, nullptr, read_cb, nullptr) != ARCHIVE_OK) {
      if (!empty_content()) throw fail("opening");
      finish_content();  // empty content is an empty (if odd) layer
      return std::move(out_);
    }
    spool_.emplace(target_, what_);
    while (archive_entry* ae = next_header()) read_entry(ae);
    finish_content();
    spool_->flush(true);
    out_.spool_bytes = round_up(spool_->end(), align_) - target_.start;
    return std::move(out_);
  }

 private:
  bool empty_content() const { return !ctx_.exc && content_->bytes() == 0; }

  // The next entry's header; nullptr at the end of the tar.
  archive_entry* next_header() {
    check_cancel();
    archive_entry* ae = nullptr;
    int r = archive_read_next_header(a_.get(), &ae);
    if (r == ARCHIVE_EOF) return nullptr;
    if (r < ARCHIVE_WARN) {
      if (first_header_ && empty_content()) return nullptr;  // empty content: an empty layer
      throw fail("reading a header");
    }
    first_header_ = false;
    return ae;
  }

  void read_entry(archive_entry* ae) {
    const char* raw_name = archive_entry_pathname(ae);
    if (!raw_name) throw Error(ErrorKind::kIntegrity, what_ + ": a tar entry has no readable name");
    const std::string raw(raw_name);
    charge(512 + raw.size());
    std::vector<std::string> parts = clean_path(raw);
    const std::string base = parts.empty() ? std::string() : parts.back();
    if (base.rfind(".wh.", 0) == 0) return read_whiteout(parts, base, raw);

    LayerEntry e;
    e.path = join(parts, parts.size());
    if (const char* hl = archive_entry_hardlink(ae)) {
      std::vector<std::string> t = clean_path(hl);
      e.kind = LayerEntry::Kind::kHardlink;
      e.target = join(t, t.size());
      if (e.target.empty())
        throw Error(ErrorKind::kIntegrity,
                    what_ + ": hardlink " + quote(raw) + " points at the root directory");
      out_.entries.push_back(std::move(e));
      return;
    }
    std::optional<NodeType> type = node_type(ae);
    if (!type) return;
    e.node.type = *type;
    read_attributes(ae, e.node, raw);
    if (e.node.type == NodeType::kFile) {
      read_file_data(ae, e.node, raw);
    } else if (archive_read_data_skip(a_.get()) < ARCHIVE_WARN) {
      // Data attached to a non-regular entry (never in a sane tar) is skipped.
      throw fail("skipping " + quote(raw));
    }
    out_.entries.push_back(std::move(e));
  }

  // An entry whose name starts with ".wh.": an opaque marker, a whiteout, or aufs metadata.
  void read_whiteout(std::vector<std::string>& parts, const std::string& base,
                     const std::string& raw) {
    LayerEntry e;
    if (base == ".wh..wh..opq") {
      e.kind = LayerEntry::Kind::kOpaque;
      e.path = join(parts, parts.size() - 1);
    } else if (base.rfind(".wh..wh.", 0) == 0) {
      return;  // aufs metadata (.wh..wh.plnk, .wh..wh.aufs): never part of the image
    } else if (base == ".wh." || base == ".wh.." || base == ".wh...") {
      // ".wh.", ".wh.." and ".wh..." hide no name: "" and "." would be the whiteout's own
      // directory, ".." its parent (refused, as containerd does).
      throw Error(ErrorKind::kIntegrity, what_ + ": invalid whiteout entry " + quote(raw) + ": \"" +
                                             base.substr(4) + "\" is not a name in its directory");
    } else {
      e.kind = LayerEntry::Kind::kWhiteout;
      parts.back() = base.substr(4);
      e.path = join(parts, parts.size());
    }
    out_.entries.push_back(std::move(e));
  }

  // Mode, owner, mtime, symlink target, device numbers and xattrs.
  void read_attributes(archive_entry* ae, Inode& n, const std::string& raw) {
    n.mode = archive_entry_perm(ae) & 07777;
    la_int64_t uid = archive_entry_uid(ae), gid = archive_entry_gid(ae);
    if (uid < 0 || uid > 0xfffffffeLL || gid < 0 || gid > 0xfffffffeLL)
      throw Error(ErrorKind::kIntegrity,
                  what_ + ": " + quote(raw) + " has an out-of-range uid/gid");
    n.uid = static_cast<uint32_t>(uid);
    n.gid = static_cast<uint32_t>(gid);
    n.mtime = archive_entry_mtime(ae);
    long ns = archive_entry_mtime_nsec(ae);
    n.mtime_nsec = (ns >= 0 && ns < 1000000000) ? static_cast<uint32_t>(ns) : 0;
    if (n.type == NodeType::kSymlink) {
      const char* t = archive_entry_symlink(ae);
      n.link_target = t ? t : "";
      if (n.link_target.empty())
        throw Error(ErrorKind::kIntegrity,
                    what_ + ": symlink " + quote(raw) + " has an empty target");
      charge(n.link_target.size());
    }
    if (n.type == NodeType::kCharDev || n.type == NodeType::kBlockDev) {
      n.dev_major = static_cast<uint32_t>(archive_entry_rdevmajor(ae));
      n.dev_minor = static_cast<uint32_t>(archive_entry_rdevminor(ae));
    }
    read_xattrs(ae, n);
  }

  // PAX xattrs (SCHILY.xattr.* and LIBARCHIVE.xattr.*); values are binary-safe.
  void read_xattrs(archive_entry* ae, Inode& n) {
    archive_entry_xattr_reset(ae);
    const char* xname;
    const void* xval;
    size_t xlen;
    while (archive_entry_xattr_next(ae, &xname, &xval, &xlen) == ARCHIVE_OK) {
      if (!xname || !*xname) continue;
      charge(std::strlen(xname) + xlen);
      n.xattrs.emplace_back(xname, std::string(static_cast<const char*>(xval), xlen));
    }
    std::sort(n.xattrs.begin(), n.xattrs.end());
    n.xattrs.erase(std::unique(n.xattrs.begin(), n.xattrs.end(),
                               [](const auto& x, const auto& y) { return x.first == y.first; }),
                   n.xattrs.end());
  }

  // A regular file's data (sparse or not) into the spool, as extents of `n`.
  void read_file_data(archive_entry* ae, Inode& n, const std::string& raw) {
    la_int64_t size = archive_entry_size(ae);
    n.size = size > 0 ? static_cast<uint64_t>(size) : 0;
    // Aligned layout: the current range of spool blocks starts at spool offset run_start and
    // holds the file's blocks from run_block on.
    uint64_t run_start = 0, run_block = 0;
    for (;;) {
      check_cancel();
      const void* buf;
      size_t len;
      la_int64_t off;
      int rr = archive_read_data_block(a_.get(), &buf, &len, &off);
      if (rr == ARCHIVE_EOF) break;
      if (rr < ARCHIVE_WARN) throw fail("reading " + quote(raw));
      if (len == 0) continue;
      if (off < 0) throw Error(ErrorKind::kIntegrity, what_ + ": bad data offset in " + quote(raw));
      uint64_t uoff = static_cast<uint64_t>(off);
      charge(len);
      const uint64_t prev_end =
          n.extents.empty() ? 0 : n.extents.back().offset + n.extents.back().length;
      if (!n.extents.empty() && uoff < prev_end)
        throw Error(ErrorKind::kIntegrity, what_ + ": overlapping sparse data in " + quote(raw));
      uint64_t at = spool_->end();
      if (align_ > 1) {
        if (n.extents.empty() || uoff / align_ > round_up(prev_end, align_) / align_) {
          run_start = round_up(spool_->end(), align_);
          run_block = uoff / align_;
        }
        at = run_start + (uoff - run_block * align_);
        spool_->seek(at);
      }
      if (!n.extents.empty() && prev_end == uoff &&
          n.extents.back().spool_offset + n.extents.back().length == at) {
        n.extents.back().length += len;
      } else {
        n.extents.push_back({uoff, len, at});
      }
      spool_->append(buf, len);
      out_.data_bytes += len;
    }
    if (!n.extents.empty())
      n.size = std::max(n.size, n.extents.back().offset + n.extents.back().length);
  }

  // Reads what follows the tar's end too, as containerd does when it drains a layer: all of
  // the content counts for the diff_id (and against the size limit), and for gzip the last
  // member's trailer (CRC-32, length) is checked.
  void finish_content() {
    while (size_t n = content_->next().size()) {
      check_cancel();
      charge(n);
    }
    out_.diff_id = content_->digest();
  }

  Error fail(std::string_view during) {
    if (ctx_.exc) std::rethrow_exception(ctx_.exc);
    // Compressed content is not a tar: say what it is (a compressed tarball given as the layer).
    Compression inner = sniff_compression(content_->head());
    if (first_header_ && inner != Compression::kNone && compression_ != Compression::kNone) {
      std::string outer(to_string(compression_)), in(to_string(inner));
      return Error(ErrorKind::kIntegrity,
                   what_ + " is compressed twice: its " + outer + " content is " + in +
                       (inner == compression_ ? " again" : "") +
                       ", not a tar (a compressed tarball added as a layer?)");
    }
    const char* msg = archive_error_string(a_.get());
    return Error(ErrorKind::kIntegrity, what_ + ": corrupt or truncated layer (" +
                                            std::string(during) +
                                            "): " + (msg ? msg : "libarchive error"));
  }

  void check_cancel() const {
    if (limits_.cancel && limits_.cancel->load(std::memory_order_relaxed))
      throw Error(ErrorKind::kInternal, what_ + ": cancelled");
  }

  void charge(uint64_t n) {
    budget_used_ += n;
    if (budget_used_ > limits_.max_bytes)
      throw Error(ErrorKind::kLimit, what_ + ": uncompressed content exceeds the size limit of " +
                                         std::to_string(limits_.max_bytes) + " bytes");
  }

  const Compression compression_;
  const SpoolTarget target_;
  const DecodeLimits& limits_;
  const std::string what_;
  const uint64_t align_;
  std::optional<GzipReader> gz_;
  std::optional<ZstdReader> zs_;
  std::optional<ContentReader> content_;  // after gz_ and zs_: its thread stops before they go
  ReadCtx ctx_{nullptr, nullptr};
  std::unique_ptr<archive, ArchiveFree> a_;  // after content_: freed first
  std::optional<Spool> spool_;               // once the archive is open
  DecodedLayer out_;
  uint64_t budget_used_ = 0;
  bool first_header_ = true;
};

}  // namespace

DecodedLayer decode_tar(const ReadFn& read_in, Compression compression, const SpoolTarget& target,
                        const DecodeLimits& limits, std::string_view what) {
  return TarDecoder(read_in, compression, target, limits, std::string(what)).run();
}

// ---------------------------------------------------------------- applying

namespace {

std::shared_ptr<Inode> implicit_dir() {
  auto d = std::make_shared<Inode>();
  d->type = NodeType::kDir;
  d->mode = 0755;
  return d;
}

class Applier {
 public:
  Applier(Tree& tree, uint32_t layer, std::string_view what)
      : tree_(tree), layer_(layer), what_(what) {}

  // The directory that holds parts[0..n) (following symlinks, confined to the root) and the
  // length of its path in the image (0 for the root; a child's is that plus 1 + its name).
  struct Found {
    Inode* dir = nullptr;
    size_t path_len = 0;
  };

  // Resolves parts[0..n); dir is nullptr when a component is missing and !create. Every
  // directory it creates has a path of at most kMaxPathBytes. `name` is the entry, for errors.
  Found resolve_dir(const std::vector<std::string>& parts, size_t n, bool create,
                    std::string_view name) {
    // Views into `parts` and into the link targets of the tree's symlinks, which stay put:
    // resolving only ever adds directories.
    std::deque<std::string_view> todo(parts.begin(), parts.begin() + static_cast<long>(n));
    std::vector<Found> stack{{tree_.root.get(), 0}};
    int links = 0;
    uint64_t expanded = 0;
    std::vector<std::string_view> tp;
    while (!todo.empty()) {
      std::string_view c = todo.front();
      todo.pop_front();
      if (c.empty() || c == ".") continue;
      if (c == "..") {
        if (stack.size() > 1) stack.pop_back();
        continue;
      }
      const Found cur = stack.back();
      const size_t len = cur.path_len + 1 + c.size();
      auto it = cur.dir->children.find(c);
      if (it == cur.dir->children.end()) {
        if (!create) return {};
        check_path_len(len, name);
        it = cur.dir->children.emplace(std::string(c), Dentry{implicit_dir(), layer_}).first;
      }
      Inode* child = it->second.inode.get();
      if (child->type == NodeType::kDir) {
        stack.push_back({child, len});
      } else if (child->type == NodeType::kSymlink) {
        if (++links > 255)
          throw Error(ErrorKind::kIntegrity,
                      what_ + ": too many levels of symbolic links resolving " + quote(name));
        const std::string& t = child->link_target;
        if (!t.empty() && t[0] == '/') stack.resize(1);
        link_components(t, tp);
        // Each expansion queues the target's components again: charged, so that a long target
        // met over and over (x -> x/x/x/...) cannot make one entry cost time and memory at will.
        expanded += tp.size();
        layer_expanded_ += tp.size();
        if (expanded > kMaxLinkComponents)
          throw Error(ErrorKind::kLimit, what_ + ": resolving " + quote(name) +
                                             " expands symbolic links to more than " +
                                             std::to_string(kMaxLinkComponents) +
                                             " path components");
        if (layer_expanded_ > kMaxLayerLinkComponents)
          throw Error(ErrorKind::kLimit,
                      what_ + ": the layer's entries expand symbolic links to more than " +
                          std::to_string(kMaxLayerLinkComponents) + " path components in all (at " +
                          quote(name) + ")");
        todo.insert(todo.begin(), tp.begin(), tp.end());
      } else {
        if (!create) return {};
        throw Error(ErrorKind::kIntegrity, what_ + ": " + quote(name) + ": a parent is a " +
                                               std::string(to_string(child->type)) +
                                               ", not a directory");
      }
    }
    return stack.back();
  }

  void apply(LayerEntry& e, uint32_t spool) {
    std::vector<std::string> parts = clean_path(e.path);
    switch (e.kind) {
      case LayerEntry::Kind::kOpaque: {
        Inode* d = resolve_dir(parts, parts.size(), false, e.path).dir;
        if (d) d->children.clear();
        return;
      }
      case LayerEntry::Kind::kWhiteout: {
        // The hidden name is a name in its directory: never "", "." or ".." (which cleaning
        // would turn into the directory itself or its parent). decode_tar refuses those.
        const std::string_view last = std::string_view(e.path).substr(e.path.rfind('/') + 1);
        if (last.empty() || last == "." || last == "..")
          throw Error(ErrorKind::kIntegrity, what_ + ": invalid whiteout of " + quote(e.path));
        Inode* d = resolve_dir(parts, parts.size() - 1, false, e.path).dir;
        if (d) d->children.erase(parts.back());
        return;
      }
      case LayerEntry::Kind::kNode: {
        if (parts.empty()) {
          if (e.node.type != NodeType::kDir)
            throw Error(ErrorKind::kIntegrity, what_ + ": a " +
                                                   std::string(to_string(e.node.type)) +
                                                   " entry would replace the root directory");
          update_dir(*tree_.root, e.node);
          return;
        }
        Found f = resolve_dir(parts, parts.size() - 1, true, e.path);
        Inode* d = f.dir;
        auto it = d->children.find(parts.back());
        if (e.node.type == NodeType::kDir && it != d->children.end() &&
            it->second.inode->type == NodeType::kDir) {
          update_dir(*it->second.inode, e.node);
          it->second.layer = layer_;
          return;
        }
        check_path_len(f.path_len + 1 + parts.back().size(), e.path);
        auto node = std::make_shared<Inode>(std::move(e.node));
        if (node->type == NodeType::kFile) node->spool = spool;
        d->children[parts.back()] = Dentry{std::move(node), layer_};
        return;
      }
      case LayerEntry::Kind::kHardlink: {
        std::vector<std::string> tp = clean_path(e.target);
        if (parts.empty())
          throw Error(ErrorKind::kIntegrity,
                      what_ + ": a hardlink entry would replace the root directory");
        Inode* td = tp.empty() ? nullptr : resolve_dir(tp, tp.size() - 1, false, e.target).dir;
        std::shared_ptr<Inode> target;
        if (td) {
          auto it = td->children.find(tp.back());
          if (it != td->children.end()) target = it->second.inode;
        }
        if (!target)
          throw Error(ErrorKind::kIntegrity, what_ + ": hardlink " + quote(e.path) + " points at " +
                                                 quote(e.target) + ", which does not exist");
        if (target->type == NodeType::kDir)
          throw Error(ErrorKind::kIntegrity, what_ + ": hardlink " + quote(e.path) +
                                                 " points at directory " + quote(e.target));
        Found f = resolve_dir(parts, parts.size() - 1, true, e.path);
        check_path_len(f.path_len + 1 + parts.back().size(), e.path);
        f.dir->children[parts.back()] = Dentry{std::move(target), layer_};
        return;
      }
    }
  }

 private:
  // The components of a symlink target, for resolving: ".." is kept (resolved against the
  // walk's stack); empty components and "." go.
  static void link_components(std::string_view t, std::vector<std::string_view>& out) {
    out.clear();
    size_t i = 0;
    while (i <= t.size()) {
      size_t j = t.find('/', i);
      if (j == std::string_view::npos) j = t.size();
      std::string_view c = t.substr(i, j - i);
      if (!c.empty() && c != ".") out.push_back(c);
      i = j + 1;
    }
  }
  // A node at a path longer than Linux's PATH_MAX allows could be neither made by docker or
  // containerd (ENAMETOOLONG) nor used by most programs in the guest.
  void check_path_len(size_t len, std::string_view name) const {
    if (len > kMaxPathBytes)
      throw Error(ErrorKind::kLimit, what_ + ": " + quote(name) +
                                         ": its path in the image would be longer than " +
                                         std::to_string(kMaxPathBytes) + " bytes (PATH_MAX)");
  }
  static void update_dir(Inode& dst, Inode& src) {
    dst.mode = src.mode;
    dst.uid = src.uid;
    dst.gid = src.gid;
    dst.mtime = src.mtime;
    dst.mtime_nsec = src.mtime_nsec;
    dst.xattrs = std::move(src.xattrs);
  }

  Tree& tree_;
  uint32_t layer_;
  std::string what_;
  uint64_t layer_expanded_ = 0;  // symlink components queued for all entries of the layer
};

}  // namespace

void apply_layer(Tree& tree, DecodedLayer& decoded, uint32_t layer, uint32_t spool,
                 std::string_view what) {
  Applier ap(tree, layer, what);
  for (auto& e : decoded.entries)
    if (e.kind == LayerEntry::Kind::kOpaque) ap.apply(e, spool);
  for (auto& e : decoded.entries)
    if (e.kind == LayerEntry::Kind::kWhiteout) ap.apply(e, spool);
  for (auto& e : decoded.entries)
    if (e.kind == LayerEntry::Kind::kNode || e.kind == LayerEntry::Kind::kHardlink)
      ap.apply(e, spool);
  decoded.entries.clear();
}

}  // namespace img2vm::layers
