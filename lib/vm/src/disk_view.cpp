#include "img2vm/vm/disk_view.hpp"

#include <fcntl.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "img2vm/base/error.hpp"
#include "img2vm/base/fd.hpp"

namespace img2vm::vm {

namespace fs = std::filesystem;

std::string_view to_string(DiskMode m) {
  switch (m) {
    case DiskMode::kReadWrite:
      return "read-write";
    case DiskMode::kReadOnly:
      return "read-only";
    case DiskMode::kCopyOnWrite:
      return "copy-on-write";
  }
  return "?";
}

namespace {

bool pread_full(int fd, uint8_t* buf, uint64_t len, uint64_t off) {
  while (len) {
    ssize_t n = ::pread(fd, buf, len, off_t(off));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return false;
    if (n == 0) {  // past the end of a file that shrank underneath us: zeros
      std::memset(buf, 0, len);
      return true;
    }
    buf += n, len -= uint64_t(n), off += uint64_t(n);
  }
  return true;
}

bool pwrite_full(int fd, const uint8_t* buf, uint64_t len, uint64_t off) {
  while (len) {
    ssize_t n = ::pwrite(fd, buf, len, off_t(off));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      if (n == 0) errno = EIO;
      return false;
    }
    buf += n, len -= uint64_t(n), off += uint64_t(n);
  }
  return true;
}

// A file or block device, used directly.
class PlainView final : public DiskView {
 public:
  PlainView(UniqueFd fd, uint64_t size, bool ro, std::string_view kind)
      : fd_(std::move(fd)), size_(size), ro_(ro), kind_(kind) {}
  uint64_t size() const override { return size_; }
  bool read(uint8_t* buf, uint64_t len, uint64_t off) override {
    return pread_full(fd_.get(), buf, len, off);
  }
  bool write(const uint8_t* buf, uint64_t len, uint64_t off) override {
    if (ro_) {
      errno = EROFS;
      return false;
    }
    return pwrite_full(fd_.get(), buf, len, off);
  }
  bool flush() override { return ro_ || ::fdatasync(fd_.get()) == 0; }
  bool read_only() const override { return ro_; }
  std::string_view kind() const override { return kind_; }

 private:
  UniqueFd fd_;
  uint64_t size_;
  bool ro_;
  std::string_view kind_;
};

// Which 512-byte sectors of a copy-on-write view the guest has written.
class SectorMap {
 public:
  static constexpr uint64_t kSector = 512;
  explicit SectorMap(uint64_t size)
      : sectors_((size + kSector - 1) / kSector), words_((sectors_ + 63) / 64, 0) {}
  bool test(uint64_t s) const { return (words_[s / 64] >> (s % 64)) & 1; }
  void set(uint64_t s) { words_[s / 64] |= uint64_t(1) << (s % 64); }
  // Marks every sector [off, off+len) touches (len > 0).
  void mark(uint64_t off, uint64_t len) {
    for (uint64_t s = off / kSector; s <= (off + len - 1) / kSector; ++s) set(s);
  }
  uint64_t sectors() const { return sectors_; }
  std::vector<uint64_t>& words() { return words_; }
  const std::vector<uint64_t>& words() const { return words_; }
  // Calls f(offset, length) for the marked bytes of a disk of `size` bytes, in order, in pieces
  // of at most 1 MiB.
  template <typename F>
  void for_each_piece(uint64_t size, F f) const {
    for_each_run([&](uint64_t first, uint64_t count) {
      const uint64_t end = std::min(size, (first + count) * kSector);
      for (uint64_t off = first * kSector; off < end;) {
        const uint64_t n = std::min<uint64_t>(end - off, 1 << 20);
        f(off, n);
        off += n;
      }
    });
  }
  // Calls f(first, count) for each run of marked sectors, in order.
  template <typename F>
  void for_each_run(F f) const {
    for (uint64_t s = 0; s < sectors_;) {
      if (!test(s)) {
        ++s;
        continue;
      }
      uint64_t e = s + 1;
      while (e < sectors_ && test(e)) ++e;
      f(s, e - s);
      s = e;
    }
  }

 private:
  uint64_t sectors_;
  std::vector<uint64_t> words_;
};

void save_written(DiskView& view, const SectorMap& map, const fs::path& dst);

// The base image read-only underneath; every 512-byte sector the guest writes lives in the
// overlay file at the same offset, and a bitmap says which sectors those are. A write that
// covers part of a sector not yet in the overlay first copies that sector up from the base.
class OverlayView final : public DiskView {
 public:
  static constexpr uint64_t kGrain = SectorMap::kSector;

  OverlayView(UniqueFd base, UniqueFd overlay, uint64_t size)
      : base_(std::move(base)), overlay_(std::move(overlay)), size_(size), dirty_(size) {
    if (::ftruncate(overlay_.get(), off_t(size)) != 0)
      throw_errno("cannot size the copy-on-write overlay");
  }
  uint64_t size() const override { return size_; }
  bool read_only() const override { return false; }
  std::string_view kind() const override { return "overlay"; }
  bool flush() override { return true; }  // the overlay dies with the VM: nothing to make durable
  void save_writes(const fs::path& dst) override { save_written(*this, dirty_, dst); }

  bool read(uint8_t* buf, uint64_t len, uint64_t off) override {
    while (len) {
      uint64_t g = off / kGrain;
      bool d = dirty_.test(g);
      // Extend over the following grains in the same state.
      uint64_t end = (g + 1) * kGrain;
      while (end < off + len && dirty_.test(end / kGrain) == d) end += kGrain;
      uint64_t n = std::min(end, off + len) - off;
      if (!pread_full(d ? overlay_.get() : base_.get(), buf, n, off)) return false;
      buf += n, len -= n, off += n;
    }
    return true;
  }

  bool write(const uint8_t* buf, uint64_t len, uint64_t off) override {
    if (len == 0) return true;
    uint64_t first = off / kGrain, last = (off + len - 1) / kGrain;
    if (off % kGrain && !copy_up(first)) return false;
    if ((off + len) % kGrain && !copy_up(last)) return false;
    if (!pwrite_full(overlay_.get(), buf, len, off)) return false;
    dirty_.mark(off, len);
    return true;
  }

 private:
  bool copy_up(uint64_t g) {
    if (dirty_.test(g)) return true;
    uint8_t sector[kGrain];
    uint64_t off = g * kGrain, n = std::min(kGrain, size_ - off);
    if (!pread_full(base_.get(), sector, n, off) || !pwrite_full(overlay_.get(), sector, n, off))
      return false;
    dirty_.set(g);
    return true;
  }

  UniqueFd base_, overlay_;
  uint64_t size_;
  SectorMap dirty_;
};

// A reflink clone of the image, used directly; it notes which sectors the guest wrote, for
// save_writes().
class ReflinkView final : public DiskView {
 public:
  ReflinkView(UniqueFd clone, uint64_t size) : fd_(std::move(clone)), size_(size), written_(size) {}
  uint64_t size() const override { return size_; }
  bool read_only() const override { return false; }
  std::string_view kind() const override { return "reflink"; }
  bool flush() override { return ::fdatasync(fd_.get()) == 0; }
  void save_writes(const fs::path& dst) override { save_written(*this, written_, dst); }
  bool read(uint8_t* buf, uint64_t len, uint64_t off) override {
    return pread_full(fd_.get(), buf, len, off);
  }
  bool write(const uint8_t* buf, uint64_t len, uint64_t off) override {
    if (len == 0) return true;
    if (!pwrite_full(fd_.get(), buf, len, off)) return false;
    written_.mark(off, len);
    return true;
  }

 private:
  UniqueFd fd_;
  uint64_t size_;
  SectorMap written_;
};

// The saved writes of a copy-on-write view (a snapshot's disk-N): SavedWritesHeader at 0, the
// sector map (one bit per 512-byte sector, 64-bit words) at kMapOffset, and from data_offset
// (4 KiB aligned) the disk's bytes at their own offsets: written sectors hold data, the rest
// are holes. The file is data_offset + disk size bytes long.
struct SavedWritesHeader {
  char magic[8] = {'I', 'M', 'G', '2', 'V', 'M', 'D', 'W'};
  uint64_t disk_size = 0;
  uint64_t map_offset = 0;
  uint64_t map_bytes = 0;
  uint64_t data_offset = 0;
};
constexpr uint64_t kMapOffset = 4096;

SavedWritesHeader saved_layout(const SectorMap& map, uint64_t disk_size) {
  SavedWritesHeader h;
  h.disk_size = disk_size;
  h.map_offset = kMapOffset;
  h.map_bytes = map.words().size() * 8;
  h.data_offset = (kMapOffset + h.map_bytes + 4095) / 4096 * 4096;
  return h;
}

void save_written(DiskView& view, const SectorMap& map, const fs::path& dst) {
  AtomicFile out(dst, 0600);
  const std::string what = out.temp_path().string();
  const SavedWritesHeader h = saved_layout(map, view.size());
  if (!pwrite_full(out.fd(), reinterpret_cast<const uint8_t*>(&h), sizeof h, 0) ||
      !pwrite_full(out.fd(), reinterpret_cast<const uint8_t*>(map.words().data()), h.map_bytes,
                   h.map_offset))
    throw_errno("cannot write " + what);
  std::vector<uint8_t> buf;
  map.for_each_piece(view.size(), [&](uint64_t off, uint64_t n) {
    buf.resize(n);
    if (!view.read(buf.data(), n, off)) throw_errno("cannot read the disk's written sectors");
    if (!pwrite_full(out.fd(), buf.data(), n, h.data_offset + off))
      throw_errno("cannot write " + what);
  });
  if (::ftruncate(out.fd(), off_t(h.data_offset + h.disk_size)) != 0)
    throw_errno("cannot size " + what);
  out.commit();
}

Error damaged_writes(const fs::path& p, const std::string& why) {
  return Error(ErrorKind::kIntegrity, "saved disk writes " + p.string() + ": " + why);
}

// The sector map of `file` (a saved writes file) for a disk of `size` bytes, checked.
SectorMap read_saved_map(int fd, const fs::path& p, uint64_t size, SavedWritesHeader& h) {
  SectorMap map(size);
  const SavedWritesHeader want = saved_layout(map, size);
  if (!pread_full(fd, reinterpret_cast<uint8_t*>(&h), sizeof h, 0))
    throw_errno("cannot read " + p.string());
  if (std::memcmp(h.magic, want.magic, sizeof h.magic) != 0)
    throw damaged_writes(p, "no IMG2VMDW header");
  if (h.disk_size != size)
    throw Error(ErrorKind::kInvalidArgument,
                "saved disk writes " + p.string() + " are of a disk of " +
                    std::to_string(h.disk_size) + " bytes, not " + std::to_string(size));
  if (h.map_offset != want.map_offset || h.map_bytes != want.map_bytes ||
      h.data_offset != want.data_offset)
    throw damaged_writes(p, "unexpected layout");
  struct stat st {};
  if (::fstat(fd, &st) != 0) throw_errno("cannot stat " + p.string());
  if (uint64_t(st.st_size) != h.data_offset + size)
    throw damaged_writes(
        p, std::to_string(st.st_size) + " bytes, not " + std::to_string(h.data_offset + size));
  if (!pread_full(fd, reinterpret_cast<uint8_t*>(map.words().data()), h.map_bytes, h.map_offset))
    throw_errno("cannot read " + p.string());
  const uint64_t tail = map.sectors() % 64;
  if (tail && (map.words().back() >> tail) != 0) throw damaged_writes(p, "sectors past the end");
  return map;
}

// Writes the sectors saved in `p` into `view`.
void replay_writes(DiskView& view, const fs::path& p) {
  UniqueFd fd = open_file(p, O_RDONLY);
  SavedWritesHeader h;
  const SectorMap map = read_saved_map(fd.get(), p, view.size(), h);
  std::vector<uint8_t> buf;
  map.for_each_piece(view.size(), [&](uint64_t off, uint64_t n) {
    buf.resize(n);
    if (!pread_full(fd.get(), buf.data(), n, h.data_offset + off))
      throw_errno("cannot read " + p.string());
    if (!view.write(buf.data(), n, off))
      throw_errno("cannot write the saved sectors into the disk's copy-on-write view");
  });
}

uint64_t size_of(int fd, const fs::path& path) {
  struct stat st {};
  if (::fstat(fd, &st) != 0) throw_errno("cannot stat disk " + path.string());
  if (S_ISREG(st.st_mode)) return uint64_t(st.st_size);
  if (S_ISBLK(st.st_mode)) {
    off_t end = ::lseek(fd, 0, SEEK_END);
    if (end < 0) throw_errno("cannot size disk " + path.string());
    return uint64_t(end);
  }
  throw Error(ErrorKind::kInvalidArgument,
              "disk " + path.string() + " is not a regular file or block device");
}

// An unlinked read-write file in `dir`: O_TMPFILE where the filesystem has it, else a named
// temporary file removed at once. Returns an invalid fd (errno set) when `dir` cannot hold one.
UniqueFd anonymous_file(const fs::path& dir) {
  int fd = ::open(dir.c_str(), O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
  if (fd >= 0) return UniqueFd(fd);
  if (errno != EOPNOTSUPP && errno != EISDIR && errno != EINVAL) return UniqueFd();
  std::string tmpl = (dir / ".img2vm-disk-XXXXXX").string();
  fd = ::mkostemp(tmpl.data(), O_CLOEXEC);
  if (fd < 0) return UniqueFd();
  ::unlink(tmpl.c_str());
  return UniqueFd(fd);
}

std::vector<fs::path> scratch_candidates(const fs::path& path, const fs::path& scratch_dir) {
  std::vector<fs::path> dirs;
  if (!scratch_dir.empty()) return {scratch_dir};
  dirs.push_back(path.has_parent_path() ? path.parent_path() : fs::path("."));
  const char* t = std::getenv("TMPDIR");
  if (t && *t) dirs.emplace_back(t);
  dirs.emplace_back("/tmp");
  return dirs;
}

}  // namespace

void DiskView::save_writes(const fs::path& dst) {
  throw Error(ErrorKind::kUnsupported, "cannot save the writes of a " + std::string(kind()) +
                                           " disk for " + dst.string() +
                                           " (only copy-on-write disks keep them apart)");
}

std::unique_ptr<DiskView> open_disk_view_with_writes(const fs::path& path,
                                                     const fs::path& saved_writes,
                                                     const fs::path& scratch_dir) {
  auto view = open_disk_view(path, DiskMode::kCopyOnWrite, scratch_dir);
  replay_writes(*view, saved_writes);
  return view;
}

std::unique_ptr<DiskView> fd_disk_view(int fd_owned, uint64_t size, bool read_only) {
  return std::make_unique<PlainView>(UniqueFd(fd_owned), size, read_only,
                                     read_only ? "read-only" : "read-write");
}

std::unique_ptr<DiskView> overlay_disk_view(int base_fd_owned, int overlay_fd_owned,
                                            uint64_t size) {
  return std::make_unique<OverlayView>(UniqueFd(base_fd_owned), UniqueFd(overlay_fd_owned), size);
}

std::unique_ptr<DiskView> open_disk_view(const fs::path& path, DiskMode mode,
                                         const fs::path& scratch_dir) {
  if (mode != DiskMode::kCopyOnWrite) {
    const bool ro = mode == DiskMode::kReadOnly;
    UniqueFd fd = open_file(path, ro ? O_RDONLY : O_RDWR);
    uint64_t size = size_of(fd.get(), path);
    return std::make_unique<PlainView>(std::move(fd), size, ro, ro ? "read-only" : "read-write");
  }
  UniqueFd base = open_file(path, O_RDONLY);
  uint64_t size = size_of(base.get(), path);
  int last_errno = 0;
  fs::path last_dir;
  for (const fs::path& dir : scratch_candidates(path, scratch_dir)) {
    UniqueFd tmp = anonymous_file(dir);
    if (!tmp) {
      last_errno = errno;
      last_dir = dir;
      continue;
    }
    // Sharing the image's extents costs nothing and is as fast as the image itself.
    if (::ioctl(tmp.get(), FICLONE, base.get()) == 0)
      return std::make_unique<ReflinkView>(std::move(tmp), size);
    return std::make_unique<OverlayView>(std::move(base), std::move(tmp), size);
  }
  errno = last_errno;
  throw_errno("cannot create a copy-on-write overlay for " + path.string() + " in " +
              last_dir.string());
}

void clone_file(const fs::path& src, const fs::path& dst) {
  UniqueFd in = open_file(src, O_RDONLY);
  uint64_t size = size_of(in.get(), src);
  AtomicFile out(dst, 0644);
  if (::ioctl(out.fd(), FICLONE, in.get()) != 0) {
    // A sparse copy: only the data extents, so a mostly empty 1 GiB image stays small.
    uint64_t pos = 0;
    std::vector<uint8_t> buf;
    while (pos < size) {
      off_t data = ::lseek(in.get(), off_t(pos), SEEK_DATA);
      if (data < 0 && errno == ENXIO) break;  // only a hole remains
      off_t hole = data < 0 ? off_t(size) : ::lseek(in.get(), data, SEEK_HOLE);
      if (data < 0) data = off_t(pos);  // no SEEK_DATA here: copy everything
      if (hole < 0) hole = off_t(size);
      uint64_t at = uint64_t(data), end = std::min<uint64_t>(uint64_t(hole), size);
      while (at < end) {
        loff_t ioff = loff_t(at), ooff = loff_t(at);
        ssize_t n = ::copy_file_range(in.get(), &ioff, out.fd(), &ooff, end - at, 0);
        if (n < 0 && errno == EINTR) continue;
        if (n > 0) {
          at += uint64_t(n);
          continue;
        }
        if (n < 0 && errno != EXDEV && errno != ENOSYS && errno != EINVAL && errno != EOPNOTSUPP)
          throw_errno("cannot copy " + src.string() + " to " + out.temp_path().string());
        // copy_file_range cannot help (or hit an early end): plain reads and writes.
        buf.resize(1 << 20);
        uint64_t len = std::min<uint64_t>(buf.size(), end - at);
        if (!pread_full(in.get(), buf.data(), len, at) ||
            !pwrite_full(out.fd(), buf.data(), len, at))
          throw_errno("cannot copy " + src.string() + " to " + out.temp_path().string());
        at += len;
      }
      pos = end;
    }
    if (::ftruncate(out.fd(), off_t(size)) != 0)
      throw_errno("cannot size " + out.temp_path().string());
  }
  out.commit();
}

}  // namespace img2vm::vm
