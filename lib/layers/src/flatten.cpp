#include "img2vm/layers/flatten.hpp"

#include <fcntl.h>
#include <linux/falloc.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <optional>
#include <thread>
#include <unordered_set>

#include "img2vm/base/error.hpp"
#include "img2vm/layers/apply.hpp"
#include "img2vm/layers/compression.hpp"

namespace img2vm::layers {

namespace fs = std::filesystem;

LayerSource LayerSource::from_file(std::string media_type, Digest digest, uint64_t size,
                                   fs::path path, Digest diff_id) {
  LayerSource s;
  s.media_type = std::move(media_type);
  s.digest = std::move(digest);
  s.size = size;
  s.diff_id = std::move(diff_id);
  s.open = [path = std::move(path)] { return open_file(path, O_RDONLY); };
  return s;
}

namespace {

// An anonymous temporary file in `dir` (O_TMPFILE, or mkstemp + unlink).
UniqueFd make_spool(const fs::path& dir_in) {
  fs::path dir = dir_in;
  if (dir.empty()) {
    const char* t = std::getenv("TMPDIR");
    dir = (t && *t) ? fs::path(t) : fs::path("/tmp");
  }
  int fd = ::open(dir.c_str(), O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
  if (fd >= 0) return UniqueFd(fd);
  std::string tmpl = (dir / "img2vm-spool.XXXXXX").string();
  fd = ::mkostemp(tmpl.data(), O_CLOEXEC);
  if (fd < 0) throw_errno("cannot create a spool file in " + dir.string());
  ::unlink(tmpl.c_str());
  return UniqueFd(fd);
}

// Reads a layer blob, hashing and counting every byte, refusing more than the declared size.
class VerifyingReader {
 public:
  VerifyingReader(const LayerSource& src, std::string what) : src_(src), what_(std::move(what)) {
    fd_ = src.open();
    if (!fd_) throw Error(ErrorKind::kIo, what_ + ": cannot open the blob");
  }
  // Reads the first bytes (for the magic); they are replayed by read().
  std::string_view peek() {
    if (!peeked_) {
      peeked_ = true;
      head_.resize(4096);
      size_t got = 0;
      while (got < head_.size()) {
        size_t n = raw_read(head_.data() + got, head_.size() - got);
        if (n == 0) break;
        got += n;
      }
      head_.resize(got);
    }
    return head_;
  }
  size_t read(void* buf, size_t n) {
    if (head_pos_ < head_.size()) {
      size_t k = std::min(n, head_.size() - head_pos_);
      std::memcpy(buf, head_.data() + head_pos_, k);
      head_pos_ += k;
      return k;
    }
    return raw_read(buf, n);
  }
  // Reads to the end, then checks the size and the digest.
  void finish() {
    std::vector<char> buf(1 << 16);
    while (raw_read(buf.data(), buf.size()) > 0) {
    }
    verify();
  }
  // After a decoding failure: if the blob itself is wrong, say that instead.
  void explain_failure() {
    try {
      finish();
    } catch (const Error& e) {
      if (e.kind() == ErrorKind::kIntegrity) throw;
    } catch (...) {
    }
  }

 private:
  size_t raw_read(void* buf, size_t n) {
    // Never read more than one byte past the declared size.
    uint64_t allowed = src_.size + 1 - std::min<uint64_t>(bytes_, src_.size + 1);
    if (allowed == 0) return 0;
    n = static_cast<size_t>(std::min<uint64_t>(n, allowed));
    for (;;) {
      ssize_t r = ::read(fd_.get(), buf, n);
      if (r < 0) {
        if (errno == EINTR) continue;
        throw_errno(what_ + ": cannot read the blob");
      }
      if (r > 0) {
        sha_.update(buf, static_cast<size_t>(r));
        bytes_ += static_cast<uint64_t>(r);
        if (bytes_ > src_.size)
          throw Error(ErrorKind::kIntegrity, what_ + ": blob is larger than the " +
                                                 std::to_string(src_.size) +
                                                 " bytes its descriptor declares");
      }
      return static_cast<size_t>(r);
    }
  }
  void verify() {
    if (verified_) return;
    verified_ = true;
    if (bytes_ != src_.size)
      throw Error(ErrorKind::kIntegrity, what_ + ": truncated blob: " + std::to_string(bytes_) +
                                             " of " + std::to_string(src_.size) + " bytes");
    Digest got = sha_.finish();
    if (got != src_.digest)
      throw Error(ErrorKind::kIntegrity,
                  what_ + ": digest mismatch: the blob's content hashes to " + got.str());
  }

  const LayerSource& src_;
  std::string what_;
  UniqueFd fd_;
  Sha256 sha_;
  uint64_t bytes_ = 0;
  std::string head_;
  size_t head_pos_ = 0;
  bool peeked_ = false;
  bool verified_ = false;
};

// Throws when the caller's cancel flag (FlattenOptions::cancel) is set.
void throw_if_cancelled(const std::atomic<bool>* cancel, const std::string& what) {
  if (cancel && cancel->load(std::memory_order_relaxed))
    throw Error(ErrorKind::kIo, what + ": cancelled");
}

// Decodes layer `index` (from 0); its content must hash to its diff_id. `cancel` (the
// caller's) is checked before every read of the blob.
DecodedLayer decode_source(const LayerSource& src, size_t index, const SpoolTarget& spool,
                           const DecodeLimits& limits, const std::string& what,
                           const std::atomic<bool>* cancel) {
  std::optional<Compression> declared = compression_from_media_type(src.media_type);
  if (!declared)
    throw Error(ErrorKind::kUnsupported,
                what + ": unsupported layer media type \"" + src.media_type + "\"");
  VerifyingReader r(src, what);
  Compression actual = sniff_compression(r.peek());
  Compression use = *declared;
  if (actual != *declared) {
    // A plain-tar media type over compressed bytes is decoded by its magic, as containerd does;
    // compressed media types must match their magic.
    if (*declared == Compression::kNone) {
      use = actual;
    } else {
      r.explain_failure();
      throw Error(ErrorKind::kIntegrity,
                  what + ": media type says " + std::string(to_string(*declared)) +
                      " but the data is not " + std::string(to_string(*declared)));
    }
  }
  DecodedLayer d;
  try {
    d = decode_tar(
        [&](void* b, size_t n) {
          throw_if_cancelled(cancel, what);
          return r.read(b, n);
        },
        use, spool, limits, what);
  } catch (const Error& e) {
    if (e.kind() == ErrorKind::kIntegrity) r.explain_failure();
    throw;
  }
  r.finish();  // the blob's own digest first: a damaged blob is reported as such
  if (d.diff_id != src.diff_id)
    throw Error(ErrorKind::kIntegrity, "layer " + std::to_string(index + 1) +
                                           ": diff_id mismatch: config says " + src.diff_id.str() +
                                           ", content is " + d.diff_id.str());
  return d;
}

}  // namespace

uint64_t tree_cost(const Tree& tree) {
  uint64_t cost = 0;
  std::unordered_set<const Inode*> seen;
  std::vector<const Inode*> todo{tree.root.get()};
  while (!todo.empty()) {
    const Inode* n = todo.back();
    todo.pop_back();
    if (!seen.insert(n).second) continue;
    cost += 512 + n->data_bytes() + n->link_target.size();
    for (const auto& [name, d] : n->children) {
      cost += name.size();
      todo.push_back(d.inode.get());
    }
  }
  return cost;
}

namespace {

std::string layer_name(const std::vector<LayerSource>& layers, size_t i) {
  return "layer " + std::to_string(i + 1) + "/" + std::to_string(layers.size()) + " " +
         layers[i].digest.str();
}

// Decodes the layers (several at once) into their spool targets and applies them in order to
// out.tree; returns each layer's spool bytes.
std::vector<uint64_t> decode_all(const std::vector<LayerSource>& layers,
                                 const std::vector<SpoolTarget>& targets, const FlattenOptions& opt,
                                 Flattened& out, const std::function<void()>& layer_decoded = {}) {
  const size_t n = layers.size();
  std::vector<uint64_t> spool_bytes(n);
  std::vector<std::optional<DecodedLayer>> done(n);
  std::vector<std::exception_ptr> errors(n);
  std::mutex mu;
  std::condition_variable cv;
  std::atomic<size_t> next{0};
  std::atomic<bool> cancel{false};
  DecodeLimits limits;
  limits.max_bytes = opt.max_bytes;
  limits.cancel = &cancel;

  // The largest blobs first, so that no large layer is left to decode alone at the end
  // (longest-processing-time-first scheduling, with the blob size as the cost).
  std::vector<size_t> order(n);
  for (size_t i = 0; i < n; ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t x, size_t y) { return layers[x].size > layers[y].size; });

  auto worker = [&] {
    for (;;) {
      size_t k = next.fetch_add(1);
      if (k >= n || cancel.load()) return;
      const size_t i = order[k];
      std::optional<DecodedLayer> d;
      std::exception_ptr err;
      try {
        d = decode_source(layers[i], i, targets[i], limits, layer_name(layers, i), opt.cancel);
      } catch (...) {
        err = std::current_exception();
      }
      if (!err && layer_decoded) layer_decoded();
      std::lock_guard lk(mu);
      done[i] = std::move(d);
      errors[i] = err;
      cv.notify_all();
    }
  };
  unsigned threads = opt.threads ? opt.threads : std::max(1u, std::thread::hardware_concurrency());
  threads = static_cast<unsigned>(std::min<size_t>(threads, std::max<size_t>(n, 1)));
  std::vector<std::thread> pool;
  struct Joiner {
    std::vector<std::thread>& p;
    std::atomic<bool>& c;
    ~Joiner() {
      c.store(true);
      for (auto& t : p)
        if (t.joinable()) t.join();
    }
  } joiner{pool, cancel};
  for (unsigned t = 0; t < threads; ++t) pool.emplace_back(worker);

  for (size_t i = 0; i < n; ++i) {
    DecodedLayer d;
    {
      std::unique_lock lk(mu);
      cv.wait(lk, [&] { return done[i].has_value() || errors[i]; });
      if (errors[i]) {
        cancel.store(true);
        std::rethrow_exception(errors[i]);
      }
      d = std::move(*done[i]);
      done[i].reset();
    }
    throw_if_cancelled(opt.cancel, layer_name(layers, i));
    out.spooled_bytes += d.data_bytes;
    spool_bytes[i] = d.spool_bytes;
    apply_layer(out.tree, d, static_cast<uint32_t>(i + 1), static_cast<uint32_t>(i + 1),
                layer_name(layers, i));
    uint64_t cost = tree_cost(out.tree);
    if (cost > opt.max_bytes)
      throw Error(ErrorKind::kLimit, "the image's content exceeds the size limit of " +
                                         std::to_string(opt.max_bytes) + " bytes after " +
                                         layer_name(layers, i));
    if (opt.progress) opt.progress(i + 1, n);
  }
  return spool_bytes;
}

// Whether `fd` (an empty file) can have block-aligned ranges of `align` bytes collapsed.
bool can_collapse(int fd, uint64_t align) {
  if (::ftruncate(fd, static_cast<off_t>(3 * align)) != 0) return false;
  bool ok = ::fallocate(fd, FALLOC_FL_COLLAPSE_RANGE, static_cast<off_t>(align),
                        static_cast<off_t>(align)) == 0;
  if (::ftruncate(fd, 0) != 0) throw_errno("cannot truncate the output file");
  return ok;
}

// Makes what the decoders wrote durable while they go on (an fdatasync after each layer), so
// that the final fsync has little left to wait for: on a virtual disk a flush costs about as
// much as the data written since the one before. Failures are the final fsync's to report.
class Syncer {
 public:
  explicit Syncer(int fd) : fd_(fd), thread_([this] { loop(); }) {}
  ~Syncer() {
    {
      std::lock_guard lk(mu_);
      stop_ = true;
    }
    cv_.notify_one();
    thread_.join();
  }
  Syncer(const Syncer&) = delete;
  Syncer& operator=(const Syncer&) = delete;
  void poke() {
    {
      std::lock_guard lk(mu_);
      pending_ = true;
    }
    cv_.notify_one();
  }

 private:
  void loop() {
    std::unique_lock lk(mu_);
    for (;;) {
      cv_.wait(lk, [&] { return pending_ || stop_; });
      if (stop_) return;
      pending_ = false;
      lk.unlock();
      (void)::fdatasync(fd_);
      lk.lock();
    }
  }

  int fd_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool pending_ = false, stop_ = false;
  std::thread thread_;  // last: started once the rest is ready
};

// Decodes in place: layer i into [offset + i * region, ...) of the output, then closes the gaps.
Flattened flatten_in_place(const std::vector<LayerSource>& layers, const FlattenOptions& opt,
                           uint64_t region) {
  const auto& o = opt.output;
  const size_t n = layers.size();
  Flattened out;
  out.spools.resize(n + 1);
  std::vector<SpoolTarget> targets;
  for (size_t i = 0; i < n; ++i) {
    targets.push_back({});
    targets[i].fd = o.fd;
    targets[i].base = o.offset + i * region;
    targets[i].align = o.align;
    targets[i].limit = region;
    targets[i].writeback_step = 4u << 20;
  }
  std::vector<uint64_t> len;
  {
    Syncer syncer(o.fd);
    len = decode_all(layers, targets, opt, out, [&] { syncer.poke(); });
  }
  // Close the gaps from the last layer backwards, so that the offsets still to use stay put.
  uint64_t file_end = targets[n - 1].base + len[n - 1];
  if (::ftruncate(o.fd, static_cast<off_t>(file_end)) != 0)
    throw_errno("cannot size the output file");
  for (size_t k = n - 1; k-- > 0;) {
    const uint64_t gap = targets[k].base + len[k], gap_len = region - len[k];
    if (gap_len == 0) continue;
    if (gap + gap_len >= file_end) {  // nothing after it
      if (::ftruncate(o.fd, static_cast<off_t>(gap)) != 0)
        throw_errno("cannot size the output file");
      file_end = gap;
    } else {
      if (::fallocate(o.fd, FALLOC_FL_COLLAPSE_RANGE, static_cast<off_t>(gap),
                      static_cast<off_t>(gap_len)) != 0)
        throw_errno("cannot close up the decoded layers in the output file");
      file_end -= gap_len;
    }
  }
  uint64_t at = o.offset;
  for (size_t i = 0; i < n; ++i) {
    out.spools[i + 1] = {o.fd, at};
    at += len[i];
  }
  out.data_begin = o.offset;
  out.data_end = at;
  out.in_place = true;
  return out;
}

// Decodes each layer into a spool file of its own, then copies them one after another into
// the output.
Flattened flatten_via_spools(const std::vector<LayerSource>& layers, const FlattenOptions& opt) {
  const auto& o = opt.output;
  const size_t n = layers.size();
  Flattened out;
  out.spools.resize(n + 1);
  std::vector<SpoolTarget> targets;
  std::vector<UniqueFd> files;
  for (size_t i = 0; i < n; ++i) {
    files.push_back(make_spool(opt.spool_dir));
    targets.push_back({});
    targets[i].fd = files.back().get();
    targets[i].align = o.align;
  }
  std::vector<uint64_t> len = decode_all(layers, targets, opt, out);
  uint64_t at = o.offset;
  for (size_t i = 0; i < n; ++i) {
    throw_if_cancelled(opt.cancel, layer_name(layers, i));
    // A spool file may end before len[i] (the last block's tail): the rest is zeros anyway.
    copy_range(files[i].get(), 0, o.fd, at, len[i],
               layer_name(layers, i) + ": spooled data into the output");
    files[i].reset();
    out.spools[i + 1] = {o.fd, at};
    at += len[i];
  }
  if (::ftruncate(o.fd, static_cast<off_t>(at)) != 0) throw_errno("cannot size the output file");
  out.data_begin = o.offset;
  out.data_end = at;
  return out;
}

}  // namespace

uint32_t Flattened::add_spool(UniqueFd fd, uint64_t base) {
  if (spools.empty()) spools.resize(1);
  spools.push_back({fd.get(), base});
  owned.push_back(std::move(fd));
  return static_cast<uint32_t>(spools.size() - 1);
}

Flattened flatten(const std::vector<LayerSource>& layers, const FlattenOptions& opt) {
  const size_t n = layers.size();
  for (size_t i = 0; i < n; ++i) {
    const Digest& id = layers[i].diff_id;
    if (id.empty())
      throw Error(
          ErrorKind::kInvalidArgument,
          layer_name(layers, i) + ": no diff_id given (the image config's rootfs.diff_ids entry)");
    if (id.algorithm() != "sha256")
      throw Error(ErrorKind::kUnsupported,
                  layer_name(layers, i) + ": diff_id " + id.str() +
                      " is not sha256, the only algorithm img2vm verifies layers with");
  }
  if (opt.output.fd < 0) {
    Flattened out;
    out.spools.resize(n + 1);
    std::vector<SpoolTarget> targets;
    for (size_t i = 0; i < n; ++i) {
      out.owned.push_back(make_spool(opt.spool_dir));
      out.spools[i + 1] = {out.owned.back().get(), 0};
      targets.push_back({});
      targets.back().fd = out.owned.back().get();
    }
    decode_all(layers, targets, opt, out);
    return out;
  }
  const auto& o = opt.output;
  if (o.align == 0 || (o.align & (o.align - 1)) || o.offset % o.align)
    throw Error(ErrorKind::kInternal, "flatten: output alignment");
  if (n > 0 && o.in_place && can_collapse(o.fd, o.align)) {
    // Regions far larger than any layer: the file stays sparse, so only what is written counts.
    // (Within the file size limit, if one is set: past it a write would raise SIGXFSZ.)
    uint64_t span = 4ull << 40;
    struct rlimit fsize {};
    if (::getrlimit(RLIMIT_FSIZE, &fsize) == 0 && fsize.rlim_cur != RLIM_INFINITY)
      span = std::min<uint64_t>(span, fsize.rlim_cur);
    uint64_t region = o.region ? o.region : (span > o.offset ? (span - o.offset) / n : 0);
    region = region / o.align * o.align;
    if (region > 0) {
      try {
        return flatten_in_place(layers, opt, region);
      } catch (const SpoolFull&) {
        // A layer outgrew its region (or the file system's largest file): start again below.
        if (::ftruncate(o.fd, 0) != 0) throw_errno("cannot truncate the output file");
      }
    }
  }
  return flatten_via_spools(layers, opt);
}

}  // namespace img2vm::layers
