#include "img2vm/registry/docker_archive.hpp"

#include <archive.h>
#include <archive_entry.h>

#include <algorithm>
#include <cerrno>
#include <exception>
#include <limits>
#include <nlohmann/json.hpp>

#include "img2vm/base/error.hpp"
#include "img2vm/registry/manifest.hpp"
#include "img2vm/registry/reference.hpp"

namespace img2vm::registry {

using nlohmann::json;

namespace {

constexpr size_t kChunk = 256u << 10;

struct ReadFree {
  void operator()(archive* a) const { archive_read_free(a); }
};
using ArchivePtr = std::unique_ptr<archive, ReadFree>;

std::string message_of(archive* a) {
  const char* s = archive_error_string(a);
  return s ? s : "libarchive error";
}

// A libarchive read callback over a pull function; an exception thrown by it is kept and
// rethrown by the caller instead of libarchive's own message.
struct Feed {
  std::function<size_t(void*, size_t)> pull;
  std::vector<char> buf = std::vector<char>(kChunk);
  std::exception_ptr error;

  static la_ssize_t read(archive* a, void* ud, const void** out) {
    auto* f = static_cast<Feed*>(ud);
    try {
      *out = f->buf.data();
      return static_cast<la_ssize_t>(f->pull(f->buf.data(), f->buf.size()));
    } catch (...) {
      f->error = std::current_exception();
      archive_set_error(a, EIO, "read failed");
      return ARCHIVE_FATAL;
    }
  }
  // Opens `a` on this feed (a must not outlive it).
  void open(archive* a, std::string_view what) {
    archive_read_set_read_callback(a, &Feed::read);
    archive_read_set_callback_data(a, this);
    if (archive_read_open1(a) != ARCHIVE_OK) fail(a, what);
  }
  [[noreturn]] void fail(archive* a, std::string_view what) const {
    if (error) std::rethrow_exception(error);
    throw Error(ErrorKind::kIntegrity, std::string(what) + ": " + message_of(a));
  }
};

// Bytes of the archive file from offset 0 on.
std::function<size_t(void*, size_t)> file_puller(const ArchiveBytes& src) {
  return [src, pos = uint64_t{0}](void* buf, size_t n) mutable {
    size_t got = src.read_at(buf, n, pos);
    pos += got;
    return got;
  };
}

// The archive's bytes through libarchive's decompressors (format "raw"): `filter` alone, or with
// filter < 0 each of those `docker load` accepts, as detected.
class Decompressor {
 public:
  Decompressor(const ArchiveBytes& src, int filter, std::string_view what)
      : what_(what), a_(archive_read_new()) {
    feed_.pull = file_puller(src);
    if (filter < 0) {
      archive_read_support_filter_gzip(a_.get());
      archive_read_support_filter_bzip2(a_.get());
      archive_read_support_filter_xz(a_.get());
      archive_read_support_filter_zstd(a_.get());
    } else {
      archive_read_support_filter_by_code(a_.get(), filter);
    }
    archive_read_support_format_raw(a_.get());
    feed_.open(a_.get(), what_);
  }
  archive* get() const { return a_.get(); }
  size_t read(void* buf, size_t n) {
    if (!started_) {
      archive_entry* e = nullptr;
      int r = archive_read_next_header(a_.get(), &e);
      if (r == ARCHIVE_EOF) return 0;
      if (r != ARCHIVE_OK) feed_.fail(a_.get(), what_);
      started_ = true;
    }
    la_ssize_t r = archive_read_data(a_.get(), buf, n);
    if (r < 0) feed_.fail(a_.get(), what_);
    return static_cast<size_t>(r);
  }

 private:
  std::string what_;
  Feed feed_;  // declared before a_: libarchive may still read while being freed
  ArchivePtr a_;
  bool started_ = false;
};

// The tar stream: the file itself, or its decompressed bytes up to `limit`. Reaching the limit
// ends the stream early and sets limited(); whoever then finds the tar cut short says why.
class TarStream {
 public:
  TarStream(const ArchiveBytes& src, int filter, uint64_t limit, std::string_view what)
      : src_(src), limit_(limit) {
    if (filter != ARCHIVE_FILTER_NONE) dec_ = std::make_unique<Decompressor>(src, filter, what);
  }
  size_t read(void* buf, size_t n) {
    if (!dec_) {
      size_t got = src_.read_at(buf, n, pos_);
      pos_ += got;
      return got;
    }
    if (pos_ >= limit_) {
      char probe;
      limited_ = limited_ || dec_->read(&probe, 1) > 0;
      return 0;
    }
    size_t got = dec_->read(buf, static_cast<size_t>(std::min<uint64_t>(n, limit_ - pos_)));
    pos_ += got;
    return got;
  }
  // Reads and drops `n` bytes; false when the stream ended first.
  bool skip(uint64_t n, std::vector<char>& scratch) {
    while (n > 0) {
      size_t got = read(scratch.data(), static_cast<size_t>(std::min<uint64_t>(n, scratch.size())));
      if (got == 0) return false;
      n -= got;
    }
    return true;
  }
  bool limited() const { return limited_; }

 private:
  ArchiveBytes src_;
  uint64_t limit_;
  uint64_t pos_ = 0;
  bool limited_ = false;
  std::unique_ptr<Decompressor> dec_;
};

std::string mib(uint64_t n) { return std::to_string(n >> 20) + " MiB"; }

[[noreturn]] void too_expanded(const ArchiveIndex& idx, std::string_view what) {
  throw Error(ErrorKind::kLimit, std::string(what) + ": the " + idx.compression +
                                     "-compressed archive expands to more than " +
                                     mib(idx.expansion_limit) +
                                     " (a compression bomb?); decompress it to a plain tar and use "
                                     "that, which is read in place");
}

}  // namespace

std::string clean_member_path(std::string_view raw) {
  if (raw.find('\0') != std::string_view::npos) return {};
  std::string_view p = raw;
  while (p.substr(0, 2) == "./") p.remove_prefix(2);
  if (p.empty() || p[0] == '/') return {};
  for (size_t s = 0;;) {
    size_t e = p.find('/', s);
    if (p.substr(s, e == std::string_view::npos ? std::string_view::npos : e - s) == "..")
      return {};
    if (e == std::string_view::npos) break;
    s = e + 1;
  }
  return std::string(p);
}

const ArchiveMember* ArchiveIndex::find(std::string_view name) const {
  std::string c = clean_member_path(name);
  if (c.empty()) return nullptr;
  auto it = members.find(c);
  return it == members.end() ? nullptr : &it->second;
}

ArchiveIndex index_archive(const ArchiveBytes& src, std::string_view what_in,
                           const ArchiveLimits& lim) {
  std::string what(what_in);
  if (src.size == 0) throw Error(ErrorKind::kIntegrity, what + " is empty, not a docker archive");
  ArchiveIndex idx;
  {
    Decompressor probe(src, -1, what);
    int filters = archive_filter_count(probe.get());
    if (filters > 2) {
      std::string chain;
      for (int i = filters - 2; i >= 0; --i)
        chain += std::string(chain.empty() ? "" : " in ") + archive_filter_name(probe.get(), i);
      throw Error(ErrorKind::kUnsupported,
                  what + " is compressed more than once (" + chain +
                      "); docker load accepts one level of gzip, bzip2, xz or zstd");
    }
    if (filters == 2) {
      idx.filter = archive_filter_code(probe.get(), 0);
      idx.compression = archive_filter_name(probe.get(), 0);
      uint64_t by_ratio =
          src.size > std::numeric_limits<uint64_t>::max() / std::max<uint64_t>(lim.max_ratio, 1)
              ? std::numeric_limits<uint64_t>::max()
              : src.size * lim.max_ratio;
      idx.expansion_limit = std::max(lim.min_expansion, by_ratio);
    }
  }
  const uint64_t stream_max = idx.filter == ARCHIVE_FILTER_NONE ? src.size : idx.expansion_limit;
  TarStream stream(src, idx.filter, idx.expansion_limit, what);
  Feed feed;
  feed.pull = [&stream](void* buf, size_t n) { return stream.read(buf, n); };
  ArchivePtr a(archive_read_new());
  archive_read_support_format_tar(a.get());
  auto fail = [&]() {
    if (stream.limited()) too_expanded(idx, what);
    feed.fail(a.get(), what);
  };
  archive_read_set_read_callback(a.get(), &Feed::read);
  archive_read_set_callback_data(a.get(), &feed);
  if (archive_read_open1(a.get()) != ARCHIVE_OK) fail();

  std::map<std::string, std::string> links;  // hard link -> target, resolved at the end
  archive_entry* e = nullptr;
  int rc;
  while ((rc = archive_read_next_header(a.get(), &e)) == ARCHIVE_OK) {
    if (++idx.entries > lim.max_entries)
      throw Error(ErrorKind::kLimit,
                  what + " has more than " + std::to_string(lim.max_entries) + " members");
    if (archive_entry_filetype(e) != AE_IFREG) continue;
    const char* raw = archive_entry_pathname(e);
    std::string_view raw_name = raw ? raw : "";
    if (raw_name.size() > lim.max_name_bytes)
      throw Error(ErrorKind::kLimit, what + " has a member path longer than " +
                                         std::to_string(lim.max_name_bytes) + " bytes");
    std::string name = clean_member_path(raw_name);
    if (name.empty())
      throw Error(ErrorKind::kIntegrity, what + ": unsafe member path '" +
                                             std::string(raw_name.substr(0, 200)) +
                                             "' in the archive");
    if (idx.members.count(name) || links.count(name))
      throw Error(ErrorKind::kIntegrity, what + ": member " + name + " appears twice");
    const uint64_t size =
        archive_entry_size_is_set(e) ? static_cast<uint64_t>(archive_entry_size(e)) : 0;
    if (const char* target = archive_entry_hardlink(e); target && size == 0) {
      links[name] = clean_member_path(target);
      continue;
    }
    if (archive_entry_sparse_count(e) > 0)
      throw Error(ErrorKind::kUnsupported,
                  what + ": member " + name + " is a sparse file, which docker never writes");
    ArchiveMember m;
    m.name = name;
    m.offset = static_cast<uint64_t>(archive_filter_bytes(a.get(), 0));
    m.size = size;
    if (m.offset > stream_max || m.size > stream_max - m.offset) {
      if (idx.filter != ARCHIVE_FILTER_NONE) too_expanded(idx, what);
      throw Error(ErrorKind::kIntegrity, what + ": member " + name +
                                             " runs past the end of the file (truncated archive?)");
    }
    Sha256 hash;
    uint64_t got = 0;
    const void* buf;
    size_t len;
    la_int64_t off;
    int r;
    while ((r = archive_read_data_block(a.get(), &buf, &len, &off)) == ARCHIVE_OK) {
      if (off < 0 || static_cast<uint64_t>(off) != got)
        throw Error(ErrorKind::kUnsupported,
                    what + ": member " + name + " has holes (a sparse file)");
      if (m.head.size() < 4)
        m.head.append(static_cast<const char*>(buf), std::min<size_t>(len, 4 - m.head.size()));
      hash.update(buf, len);
      got += len;
    }
    if (r != ARCHIVE_EOF) fail();
    if (got != m.size)
      throw Error(ErrorKind::kIntegrity, what + ": member " + name + " is truncated");
    m.digest = hash.finish();
    idx.members.emplace(name, std::move(m));
  }
  if (rc != ARCHIVE_EOF) fail();
  idx.stream_bytes = static_cast<uint64_t>(archive_filter_bytes(a.get(), 0));
  for (const auto& [name, target] : links) {
    auto it = idx.members.find(target);
    if (it == idx.members.end()) continue;  // a link to nothing usable: as if absent
    ArchiveMember m = it->second;
    m.name = name;
    idx.members.emplace(name, std::move(m));
  }
  return idx;
}

std::unique_ptr<BlobReader> open_member(const ArchiveBytes& src, const ArchiveIndex& index,
                                        const ArchiveMember& m, std::string_view what) {
  Descriptor d;
  d.digest = m.digest;
  d.size = static_cast<int64_t>(m.size);
  std::string label = std::string(what) + ": " + m.name;
  std::function<size_t(void*, size_t)> raw;
  if (index.filter == ARCHIVE_FILTER_NONE) {
    raw = [src, pos = m.offset, end = m.offset + m.size](void* buf, size_t n) mutable {
      size_t got = src.read_at(buf, static_cast<size_t>(std::min<uint64_t>(n, end - pos)), pos);
      pos += got;
      return got;
    };
  } else {
    // Decompress again from the start, dropping what comes before the member; never past its end.
    auto stream = std::make_shared<TarStream>(src, index.filter, m.offset + m.size, label);
    raw = [stream, skip = m.offset](void* buf, size_t n) mutable {
      if (skip > 0) {
        std::vector<char> scratch(kChunk);
        if (!stream->skip(skip, scratch)) return size_t{0};
        skip = 0;
      }
      return stream->read(buf, n);
    };
  }
  return verifying_reader(std::move(raw), std::move(d), std::move(label));
}

std::string read_member(const ArchiveBytes& src, const ArchiveIndex& index, std::string_view name,
                        uint64_t max, std::string_view what) {
  const ArchiveMember* m = index.find(name);
  if (!m)
    throw Error(ErrorKind::kNotFound, std::string(what) + ": missing member " + std::string(name));
  if (m->size > max)
    throw Error(ErrorKind::kLimit,
                std::string(what) + ": member " + m->name + " is larger than " + mib(max));
  std::string out(static_cast<size_t>(m->size), '\0');
  auto r = open_member(src, index, *m, what);
  size_t got = 0;
  for (size_t n; (n = r->read(out.data() + got, out.size() - got)) > 0;) got += n;
  char end;
  r->read(&end, 1);  // verifies size and digest
  return out;
}

std::vector<DockerArchiveImage> parse_archive_manifest(std::string_view bytes,
                                                       std::string_view what) {
  if (bytes.size() > kMaxManifestBytes)
    throw Error(ErrorKind::kLimit,
                std::string(what) + ": manifest.json is larger than " + mib(kMaxManifestBytes));
  json m = json::parse(bytes.begin(), bytes.end(), nullptr, false);
  if (!m.is_array() || m.empty())
    throw Error(ErrorKind::kIntegrity,
                std::string(what) + ": manifest.json is not a non-empty array");
  std::vector<DockerArchiveImage> out;
  for (const auto& img : m) {
    DockerArchiveImage d;
    if (img.is_object()) {
      if (auto t = img.find("RepoTags"); t != img.end() && t->is_array())
        for (const auto& x : *t)
          if (x.is_string()) d.repo_tags.push_back(x.get<std::string>());
      auto c = img.find("Config");
      auto l = img.find("Layers");
      d.valid = c != img.end() && c->is_string() && l != img.end() && l->is_array() &&
                std::all_of(l->begin(), l->end(), [](const json& x) { return x.is_string(); });
      if (d.valid) {
        d.config = c->get<std::string>();
        for (const auto& x : *l) d.layers.push_back(x.get<std::string>());
      }
    }
    out.push_back(std::move(d));
  }
  return out;
}

DockerArchiveChoice select_archive_image(const std::vector<DockerArchiveImage>& images,
                                         std::string_view want_ref, std::string_view what_in) {
  std::string what(what_in);
  std::string want = want_ref.empty() ? std::string() : Reference::parse(want_ref).str();
  std::optional<DockerArchiveChoice> pick;
  std::string available;
  for (size_t i = 0; i < images.size(); ++i) {
    for (const std::string& t : images[i].repo_tags) {
      available += (available.empty() ? "" : ", ") + t;
      std::string n;
      try {
        n = Reference::parse(t).str();
      } catch (const Error&) {
        continue;
      }
      if (want.empty() ? !pick : n == want) pick = DockerArchiveChoice{i, n};
    }
  }
  if (want.empty() && images.size() == 1) {
    if (!pick) pick = DockerArchiveChoice{0, ""};
  }
  if (!pick) {
    if (!want.empty())
      throw Error(ErrorKind::kNotFound, "tag not found: " + std::string(want_ref) + " in " + what +
                                            " (available: " + available + ")");
    throw Error(ErrorKind::kInvalidArgument,
                what + " holds several images; name one as docker-archive:FILE:REF (available: " +
                    available + ")");
  }
  const DockerArchiveImage& img = images[pick->image];
  if (!img.valid)
    throw Error(
        ErrorKind::kIntegrity,
        what + ": manifest.json entry lacks Config or Layers (or a layer path is not a string)");
  if (img.layers.size() > kMaxArchiveLayers)
    throw Error(ErrorKind::kLimit,
                what + ": image has more than " + std::to_string(kMaxArchiveLayers) + " layers");
  return *pick;
}

}  // namespace img2vm::registry
