#include "img2vm/registry/store.hpp"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <nlohmann/json.hpp>
#include <set>

#include "img2vm/base/error.hpp"
#include "img2vm/registry/media_types.hpp"
#include "img2vm/registry/reference.hpp"

namespace img2vm::registry {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

UniqueFd flock_file(const fs::path& p, int op) {
  UniqueFd fd = open_file(p, O_RDWR | O_CREAT, 0644);
  while (::flock(fd.get(), op) != 0) {
    if (errno != EINTR) throw_errno("flock " + p.string());
  }
  return fd;
}

void fsync_dir(const fs::path& dir) {
  UniqueFd d(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (d) ::fsync(d.get());
}

json descriptor_json(const Descriptor& d) {
  json j = {{"mediaType", d.media_type}, {"digest", d.digest.str()}, {"size", d.size}};
  if (d.platform) {
    json p = {{"os", d.platform->os}, {"architecture", d.platform->architecture}};
    if (!d.platform->variant.empty()) p["variant"] = d.platform->variant;
    j["platform"] = p;
  }
  if (!d.annotations.empty()) j["annotations"] = d.annotations;
  return j;
}

StoredImage from_descriptor(const Descriptor& d) {
  StoredImage s;
  s.manifest = d;
  if (auto it = d.annotations.find(std::string(kRefNameAnnotation)); it != d.annotations.end())
    s.name = it->second;
  if (auto it = d.annotations.find(std::string(kIndexAnnotation));
      it != d.annotations.end() && Digest::valid(it->second))
    s.index_digest = Digest::parse(it->second);
  if (auto it = d.annotations.find(std::string(kPulledAnnotation)); it != d.annotations.end())
    s.pulled = it->second;
  return s;
}

}  // namespace

// ---- Ingest ----

constexpr size_t kWriteBuffer = 1u << 20;
constexpr uint64_t kWritebackChunk = 8u << 20;

namespace {

// Gather buffers of kWriteBuffer bytes, kept for the next blob (at most a few: one per
// concurrent download is what a pull needs).
class BufferPool {
 public:
  static BufferPool& get() {
    static BufferPool p;
    return p;
  }
  std::unique_ptr<char[]> take() {
    {
      std::lock_guard l(mu_);
      if (!free_.empty()) {
        auto b = std::move(free_.back());
        free_.pop_back();
        return b;
      }
    }
    return std::make_unique_for_overwrite<char[]>(kWriteBuffer);
  }
  void give(std::unique_ptr<char[]> b) {
    if (!b) return;
    std::lock_guard l(mu_);
    if (free_.size() < kKeep) free_.push_back(std::move(b));
  }

 private:
  static constexpr size_t kKeep = 8;
  std::mutex mu_;
  std::vector<std::unique_ptr<char[]>> free_;
};

}  // namespace

Ingest::~Ingest() {
  // What was received stays in the partial file for the next pull to resume from.
  if (fd_ && buffered_ > 0) {
    try {
      flush();
    } catch (const Error&) {
    }
  }
  BufferPool::get().give(std::move(buffer_));
}

void Ingest::restart() {
  buffered_ = 0;
  if (::ftruncate(fd_.get(), 0) != 0) throw_errno("truncate " + partial_.string());
  if (::lseek(fd_.get(), 0, SEEK_SET) < 0) throw_errno("seek " + partial_.string());
  hash_ = std::make_unique<Sha256>();
  got_.reset();
  written_ = on_disk_ = writeback_ = resumed_ = 0;
}

void Ingest::write(const char* data, size_t len) {
  if (written_ + len > static_cast<uint64_t>(desc_.size)) {
    // More bytes than the descriptor promised: the blob cannot be right.
    fd_.reset();
    ::unlink(partial_.c_str());
    throw Error(ErrorKind::kIntegrity, "blob " + desc_.digest.str() + " is larger than the " +
                                           std::to_string(desc_.size) +
                                           " bytes its descriptor says");
  }
  hash_->update(data, len);
  written_ += len;
  // curl hands over 16 KiB at a time: gather it into large writes (far fewer system calls, and
  // whole large folios in the page cache).
  if (buffered_ == 0 && len >= kWriteBuffer) {
    write_out(data, len);
    return;
  }
  if (!buffer_) buffer_ = BufferPool::get().take();
  while (len > 0) {
    size_t n = std::min(len, kWriteBuffer - buffered_);
    std::memcpy(buffer_.get() + buffered_, data, n);
    buffered_ += n;
    data += n;
    len -= n;
    if (buffered_ == kWriteBuffer) flush();
  }
}

void Ingest::flush() {
  if (buffered_ == 0) return;
  write_out(buffer_.get(), buffered_);
  buffered_ = 0;
}

void Ingest::write_out(const char* data, size_t len) {
  write_all(fd_.get(), std::string_view(data, len), partial_.string());
  on_disk_ += len;
  // Start writing the data to the disk now rather than all at once in commit()'s fsync: the disk
  // works while the download goes on, and the fsync finds little left to do. (A hint: it does not
  // wait for the writes, and a failure is the fsync's to report.)
  if (on_disk_ - writeback_ >= kWritebackChunk) {
    ::sync_file_range(fd_.get(), static_cast<off_t>(writeback_),
                      static_cast<off_t>(on_disk_ - writeback_), SYNC_FILE_RANGE_WRITE);
    writeback_ = on_disk_;
  }
}

bool Ingest::matches() {
  if (present_ || verified_) return true;
  if (!got_) {
    flush();
    BufferPool::get().give(std::move(buffer_));  // for the next download, as this one is complete
    got_ = hash_->finish();
  }
  return written_ == static_cast<uint64_t>(desc_.size) && *got_ == desc_.digest;
}

void Ingest::verify() {
  if (matches()) {
    verified_ = true;
    return;
  }
  fd_.reset();
  ::unlink(partial_.c_str());
  if (written_ != static_cast<uint64_t>(desc_.size))
    throw Error(ErrorKind::kIntegrity, "blob " + desc_.digest.str() + " has " +
                                           std::to_string(written_) + " bytes, expected " +
                                           std::to_string(desc_.size));
  throw Error(
      ErrorKind::kIntegrity,
      "blob " + desc_.digest.str() + " failed verification: its content hashes to " + got_->str());
}

void Ingest::commit(bool sync_dir) {
  if (present_) return;
  verify();
  if (::fsync(fd_.get()) != 0) throw_errno("fsync " + partial_.string());
  fd_.reset();
  if (::rename(partial_.c_str(), final_.c_str()) != 0)
    throw_errno("rename " + partial_.string() + " to " + final_.string());
  if (sync_dir) fsync_dir(final_.parent_path());
}

// ---- Store ----

fs::path Store::default_home() {
  if (const char* h = std::getenv("IMG2VM_HOME"); h && *h) return h;
  if (const char* x = std::getenv("XDG_DATA_HOME"); x && *x) return fs::path(x) / "img2vm";
  if (const char* h = std::getenv("HOME"); h && *h) return fs::path(h) / ".local/share/img2vm";
  throw Error(ErrorKind::kInvalidArgument, "cannot find the store: set IMG2VM_HOME or HOME");
}

Store::Store(fs::path home) : home_(std::move(home)) {
  std::error_code ec;
  fs::create_directories(layout_dir() / "blobs" / "sha256", ec);
  if (ec)
    throw Error(ErrorKind::kIo,
                "cannot create the store " + layout_dir().string() + ": " + ec.message());
  fs::create_directories(home_ / "ingest", ec);
  if (ec)
    throw Error(ErrorKind::kIo,
                "cannot create " + (home_ / "ingest").string() + ": " + ec.message());
  // oci-layout and index.json come with the first image (put_image): a store only read from,
  // as a convert of an oci: directory reads it, costs no file writes (and no syncs).
}

namespace {

// <layout>/index.json, or an empty index while the store holds no image yet.
json read_index(const fs::path& layout) {
  const fs::path p = layout / "index.json";
  if (!fs::exists(p))
    return {
        {"schemaVersion", 2}, {"mediaType", media_type::kOciIndex}, {"manifests", json::array()}};
  json j = json::parse(read_file(p), nullptr, false);
  if (!j.is_object() || !j.contains("manifests") || !j["manifests"].is_array())
    throw Error(ErrorKind::kIntegrity, p.string() + " is not a valid OCI index");
  return j;
}

}  // namespace

fs::path Store::blob_path(const Digest& d) const {
  return layout_dir() / "blobs" / d.algorithm() / d.hex();
}

void Store::sync_blobs() const { fsync_dir(layout_dir() / "blobs" / "sha256"); }

bool Store::has_blob(const Digest& d, int64_t size) const {
  struct stat st {};
  if (::stat(blob_path(d).c_str(), &st) != 0) return false;
  return size < 0 || st.st_size == size;
}

std::string Store::read_blob(const Digest& d, uint64_t max_bytes) const {
  fs::path p = blob_path(d);
  std::error_code ec;
  auto sz = fs::file_size(p, ec);
  if (ec) throw Error(ErrorKind::kNotFound, "blob " + d.str() + " is not in the store");
  if (sz > max_bytes)
    throw Error(ErrorKind::kLimit,
                "blob " + d.str() + " is too large (" + std::to_string(sz) + " bytes)");
  std::string data = read_file(p);
  if (Digest::sha256_of(data) != d)
    throw Error(ErrorKind::kIntegrity,
                "blob " + d.str() + " in the store is corrupt (" + p.string() + ")");
  return data;
}

void Store::put_blob(const Digest& d, std::string_view data) {
  if (Digest::sha256_of(data) != d)
    throw Error(ErrorKind::kIntegrity, "content does not match digest " + d.str());
  if (has_blob(d, static_cast<int64_t>(data.size()))) return;
  write_file_atomic(blob_path(d), data);
}

std::unique_ptr<Ingest> Store::ingest(const Descriptor& d) {
  std::unique_ptr<Ingest> in(new Ingest());
  in->desc_ = d;
  in->final_ = blob_path(d.digest);
  in->partial_ = home_ / "ingest" / (d.digest.hex() + ".partial");
  in->lock_ = flock_file(home_ / "ingest" / (d.digest.hex() + ".lock"), LOCK_EX);
  if (has_blob(d.digest, d.size)) {
    in->present_ = true;
    return in;
  }
  in->fd_ = open_file(in->partial_, O_RDWR | O_CREAT, 0644);
  in->hash_ = std::make_unique<Sha256>();
  // Resume: hash what an earlier attempt left behind.
  struct stat st {};
  ::fstat(in->fd_.get(), &st);
  uint64_t have = static_cast<uint64_t>(st.st_size);
  if (have > static_cast<uint64_t>(d.size)) {
    in->restart();
  } else if (have > 0) {
    std::string buf(1 << 20, '\0');
    uint64_t done = 0;
    while (done < have) {
      ssize_t n = ::pread(in->fd_.get(), buf.data(), buf.size(), static_cast<off_t>(done));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) break;
      in->hash_->update(buf.data(), static_cast<size_t>(n));
      done += static_cast<uint64_t>(n);
    }
    in->written_ = in->resumed_ = in->on_disk_ = done;
    ::lseek(in->fd_.get(), static_cast<off_t>(done), SEEK_SET);
  }
  return in;
}

std::vector<StoredImage> Store::list() const {
  json j = read_index(layout_dir());
  ParsedManifest p =
      parse_manifest(j.dump(), media_type::kOciIndex, (layout_dir() / "index.json").string());
  std::vector<StoredImage> out;
  if (p.index)
    for (const auto& d : p.index->manifests) out.push_back(from_descriptor(d));
  return out;
}

std::optional<StoredImage> Store::find(const std::string& name) const {
  auto all = list();
  for (auto& i : all)
    if (i.name == name) return i;
  std::string norm;
  try {
    norm = Reference::parse(name).str();
  } catch (const Error&) {
    return std::nullopt;
  }
  for (auto& i : all)
    if (i.name == norm) return i;
  return std::nullopt;
}

void Store::put_image(const StoredImage& img) {
  UniqueFd l = flock_file(home_ / "index.lock", LOCK_EX);
  if (!fs::exists(layout_dir() / "oci-layout"))
    write_file_atomic(layout_dir() / "oci-layout", R"({"imageLayoutVersion":"1.0.0"})");
  json j = read_index(layout_dir());
  json kept = json::array();
  for (const auto& m : j["manifests"]) {
    bool same = m.contains("annotations") && m["annotations"].is_object() &&
                m["annotations"].value(std::string(kRefNameAnnotation), "") == img.name;
    if (!same) kept.push_back(m);
  }
  Descriptor d = img.manifest;
  d.annotations[std::string(kRefNameAnnotation)] = img.name;
  if (img.index_digest) d.annotations[std::string(kIndexAnnotation)] = img.index_digest->str();
  if (!img.pulled.empty()) d.annotations[std::string(kPulledAnnotation)] = img.pulled;
  kept.push_back(descriptor_json(d));
  j["manifests"] = kept;
  write_file_atomic(layout_dir() / "index.json", j.dump(2) + "\n");
}

bool Store::remove_image(const std::string& name) {
  auto found = find(name);
  if (!found) return false;
  UniqueFd l = flock_file(home_ / "index.lock", LOCK_EX);
  json j = read_index(layout_dir());
  json kept = json::array();
  bool removed = false;
  for (const auto& m : j["manifests"]) {
    bool same = m.contains("annotations") && m["annotations"].is_object() &&
                m["annotations"].value(std::string(kRefNameAnnotation), "") == found->name;
    if (same)
      removed = true;
    else
      kept.push_back(m);
  }
  j["manifests"] = kept;
  write_file_atomic(layout_dir() / "index.json", j.dump(2) + "\n");
  return removed;
}

UniqueFd Store::lock_shared() const { return flock_file(home_ / "store.lock", LOCK_SH); }

Store::PruneResult Store::prune() {
  UniqueFd whole = flock_file(home_ / "store.lock", LOCK_EX);
  std::set<std::string> keep;
  for (const auto& img : list()) {
    keep.insert(img.manifest.digest.hex());
    if (img.index_digest) keep.insert(img.index_digest->hex());
    try {
      ParsedManifest p = parse_manifest(read_blob(img.manifest.digest, kMaxManifestBytes),
                                        img.manifest.media_type);
      if (p.manifest) {
        keep.insert(p.manifest->config.digest.hex());
        for (const auto& l : p.manifest->layers) keep.insert(l.digest.hex());
      }
    } catch (const Error&) {
      // A missing or corrupt manifest: its blobs become unreferenced.
    }
  }
  PruneResult r;
  for (const auto& e : fs::directory_iterator(layout_dir() / "blobs" / "sha256")) {
    std::string hex = e.path().filename().string();
    if (keep.count(hex)) continue;
    std::error_code ec;
    uint64_t sz = e.file_size(ec);
    if (fs::remove(e.path(), ec)) {
      ++r.blobs;
      r.bytes += ec ? 0 : sz;
    }
  }
  // No pull runs while we hold the store exclusively: leftovers in ingest/ are stale.
  for (const auto& e : fs::directory_iterator(home_ / "ingest")) {
    std::error_code ec;
    if (e.path().extension() == ".partial") r.bytes += e.file_size(ec);
    fs::remove(e.path(), ec);
  }
  // Temporary files of index.json rewrites that a killed process left (".index.json.tmp-…";
  // those in blobs/ went above, as no image refers to them). Under index.lock: `rm` does not
  // take the store lock.
  UniqueFd index = flock_file(home_ / "index.lock", LOCK_EX);
  for (const auto& e : fs::directory_iterator(layout_dir())) {
    std::string n = e.path().filename().string();
    std::error_code ec;
    if (n.rfind(".index.json.tmp-", 0) == 0) fs::remove(e.path(), ec);
  }
  return r;
}

}  // namespace img2vm::registry
