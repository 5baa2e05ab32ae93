#include "img2vm/rootfs/extract.hpp"

extern "C" {
#include <et/com_err.h>
}
#include <ext2fs/ext2fs.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <mutex>
#include <utility>
#include <vector>

#include "img2vm/base/error.hpp"
#include "img2vm/base/fd.hpp"

namespace img2vm::rootfs {

namespace fs = std::filesystem;

namespace {

constexpr size_t kMaxSymlink = 4095;
constexpr size_t kChunk = 64 * 1024;

void check(errcode_t err, const std::string& what) {
  if (err) throw Error(ErrorKind::kIo, "ext4: " + what + ": " + error_message(err));
}

[[noreturn]] void limit(const std::string& what) { throw Error(ErrorKind::kLimit, what); }

struct Times {
  struct timespec ts[2];  // atime, mtime
};

int64_t decode_time(__u32 lo, __u32 extra, bool has_extra, long* nsec) {
  int64_t sec = static_cast<int32_t>(lo);
  *nsec = 0;
  if (!has_extra) return sec;
  sec += static_cast<int64_t>(extra & 3) << 32;
  *nsec = std::min<long>(extra >> 2, 999999999);
  return sec;
}

Times inode_times(const ext2_inode_large& in) {
  Times t{};
  long ns = 0;
  t.ts[0].tv_sec = decode_time(in.i_atime, in.i_atime_extra, in.i_extra_isize >= 16, &ns);
  t.ts[0].tv_nsec = ns;
  t.ts[1].tv_sec = decode_time(in.i_mtime, in.i_mtime_extra, in.i_extra_isize >= 12, &ns);
  t.ts[1].tv_nsec = ns;
  return t;
}

dev_t inode_dev(const ext2_inode_large& in) {
  if (in.i_block[0]) return makedev((in.i_block[0] >> 8) & 255, in.i_block[0] & 255);
  const uint32_t d = in.i_block[1];
  return makedev((d & 0xfff00) >> 8, (d & 0xff) | ((d >> 12) & 0xfff00));
}

// One copy: the open file system, the bounds and what has been done so far.
class Extractor {
 public:
  Extractor(ext2_filsys fs, const ExtractLimits& lim, bool privileged)
      : fs_(fs), lim_(lim), privileged_(privileged) {}

  // Copies the children of directory `dir` into `dirfd`, then gives `dirfd` the inode's
  // attributes.
  void copy_dir(ext2_ino_t dir, int dirfd, uint32_t depth) {
    for (const auto& [name, ino] : children(dir)) copy_entry(ino, dirfd, name, depth);
    ext2_inode_large in = read_inode(dir);
    set_attrs_fd(dirfd, in, "directory");
  }

  ext2_inode_large read_inode(ext2_ino_t ino) {
    ext2_inode_large in;
    std::memset(&in, 0, sizeof in);
    check(ext2fs_read_inode_full(fs_, ino, reinterpret_cast<ext2_inode*>(&in), sizeof in),
          "read inode " + std::to_string(ino));
    return in;
  }

  ExtractResult result;

 private:
  using Children = std::vector<std::pair<std::string, ext2_ino_t>>;

  struct IterState {
    Children* kids;
    uint64_t room;
    bool bad = false, full = false;
  };

  static int on_dirent(ext2_ino_t, int, struct ext2_dir_entry* d, int, int, char*, void* priv) {
    auto* st = static_cast<IterState*>(priv);
    std::string name(d->name, ext2fs_dirent_name_len(d));
    if (name == "." || name == "..") return 0;
    if (name.empty() || name.find('/') != std::string::npos ||
        name.find('\0') != std::string::npos) {
      st->bad = true;
      return DIRENT_ABORT;
    }
    if (st->kids->size() >= st->room) {
      st->full = true;
      return DIRENT_ABORT;
    }
    st->kids->emplace_back(std::move(name), d->inode);
    return 0;
  }

  Children children(ext2_ino_t dir) {
    Children kids;
    IterState st{&kids, lim_.max_entries - std::min(lim_.max_entries, result.entries)};
    check(ext2fs_dir_iterate2(fs_, dir, 0, nullptr, on_dirent, &st), "read directory");
    if (st.bad) throw Error(ErrorKind::kIntegrity, "ext4: a directory entry has an invalid name");
    if (st.full) limit("more than " + std::to_string(lim_.max_entries) + " entries to copy");
    return kids;
  }

  void count_entry() {
    if (++result.entries > lim_.max_entries)
      limit("more than " + std::to_string(lim_.max_entries) + " entries to copy");
  }

  void copy_entry(ext2_ino_t ino, int dirfd, const std::string& name, uint32_t depth) {
    ext2_inode_large in = read_inode(ino);
    const unsigned type = in.i_mode & LINUX_S_IFMT;
    if (type == LINUX_S_IFDIR) return copy_subdir(ino, dirfd, name, depth);
    if (type == LINUX_S_IFREG) return copy_file(ino, in, dirfd, name);
    if (type == LINUX_S_IFLNK) return copy_symlink(ino, in, dirfd, name);
    if (type == LINUX_S_IFCHR || type == LINUX_S_IFBLK || type == LINUX_S_IFIFO ||
        type == LINUX_S_IFSOCK)
      return copy_special(in, dirfd, name);
    throw Error(ErrorKind::kIntegrity, "ext4: '" + name + "' has an unknown file type");
  }

  void copy_subdir(ext2_ino_t ino, int dirfd, const std::string& name, uint32_t depth) {
    if (depth + 1 > lim_.max_depth)
      limit("directories nested deeper than " + std::to_string(lim_.max_depth) + " levels");
    count_entry();
    if (::mkdirat(dirfd, name.c_str(), 0700) != 0) throw_errno("mkdir " + name);
    UniqueFd sub(::openat(dirfd, name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
    if (!sub) throw_errno("open " + name);
    copy_dir(ino, sub.get(), depth + 1);
  }

  void copy_file(ext2_ino_t ino, const ext2_inode_large& in, int dirfd, const std::string& name) {
    count_entry();
    const uint64_t size = EXT2_I_SIZE(&in);
    if (size > lim_.max_bytes - std::min(lim_.max_bytes, result.bytes))
      limit("more than " + std::to_string(lim_.max_bytes) + " bytes of files to copy");
    UniqueFd out(
        ::openat(dirfd, name.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600));
    if (!out) throw_errno("create " + name);
    copy_data(ino, size, out.get(), name);
    result.bytes += size;
    set_attrs_fd(out.get(), in, name);
  }

  // The file's bytes; runs of zeros become holes.
  void copy_data(ext2_ino_t ino, uint64_t size, int out, const std::string& name) {
    ext2_file_t f;
    check(ext2fs_file_open(fs_, ino, 0, &f), "open " + name);
    std::vector<char> buf(kChunk);
    uint64_t done = 0;
    try {
      while (done < size) {
        unsigned got = 0;
        const unsigned want = static_cast<unsigned>(std::min<uint64_t>(kChunk, size - done));
        check(ext2fs_file_read(f, buf.data(), want, &got), "read " + name);
        if (got == 0) break;
        if (std::all_of(buf.begin(), buf.begin() + got, [](char c) { return c == 0; })) {
          if (::lseek(out, got, SEEK_CUR) < 0) throw_errno("seek " + name);
        } else {
          write_all(out, std::string_view(buf.data(), got), name);
        }
        done += got;
      }
    } catch (...) {
      ext2fs_file_close(f);
      throw;
    }
    ext2fs_file_close(f);
    if (::ftruncate(out, static_cast<off_t>(size)) != 0) throw_errno("truncate " + name);
  }

  std::string symlink_target(ext2_ino_t ino, const ext2_inode_large& in, const std::string& name) {
    const uint64_t size = EXT2_I_SIZE(&in);
    if (size == 0 || size > kMaxSymlink)
      throw Error(ErrorKind::kIntegrity, "ext4: symlink '" + name + "' has a bad length");
    auto* raw = reinterpret_cast<ext2_inode*>(const_cast<ext2_inode_large*>(&in));
    if (ext2fs_is_fast_symlink(raw))
      return std::string(reinterpret_cast<const char*>(in.i_block), size);
    ext2_file_t f;
    check(ext2fs_file_open(fs_, ino, 0, &f), "open " + name);
    std::string target(size, '\0');
    unsigned got = 0;
    errcode_t err = ext2fs_file_read(f, target.data(), static_cast<unsigned>(size), &got);
    ext2fs_file_close(f);
    check(err, "read " + name);
    target.resize(got);
    return target;
  }

  void copy_symlink(ext2_ino_t ino, const ext2_inode_large& in, int dirfd,
                    const std::string& name) {
    count_entry();
    std::string target = symlink_target(ino, in, name);
    if (target.empty() || target.find('\0') != std::string::npos)
      throw Error(ErrorKind::kIntegrity, "ext4: symlink '" + name + "' has a bad target");
    if (::symlinkat(target.c_str(), dirfd, name.c_str()) != 0) throw_errno("symlink " + name);
    set_attrs_at(dirfd, name, in, true);
  }

  void copy_special(const ext2_inode_large& in, int dirfd, const std::string& name) {
    if (!privileged_) {
      ++result.skipped;
      return;
    }
    count_entry();
    const bool dev =
        (in.i_mode & LINUX_S_IFMT) == LINUX_S_IFCHR || (in.i_mode & LINUX_S_IFMT) == LINUX_S_IFBLK;
    if (::mknodat(dirfd, name.c_str(), (in.i_mode & LINUX_S_IFMT) | 0600, dev ? inode_dev(in) : 0))
      throw_errno("mknod " + name);
    set_attrs_at(dirfd, name, in, false);
  }

  // Owner (root only), permission bits and times of an open file or directory.
  void set_attrs_fd(int fd, const ext2_inode_large& in, const std::string& what) {
    if (privileged_ && ::fchown(fd, inode_uid(in), inode_gid(in)) != 0)
      throw_errno("chown " + what);
    if (::fchmod(fd, in.i_mode & 07777) != 0) throw_errno("chmod " + what);
    Times t = inode_times(in);
    if (::futimens(fd, t.ts) != 0) throw_errno("set times of " + what);
  }

  // The same for an entry not opened (a symlink or a special file), never following it.
  void set_attrs_at(int dirfd, const std::string& name, const ext2_inode_large& in, bool link) {
    if (privileged_ &&
        ::fchownat(dirfd, name.c_str(), inode_uid(in), inode_gid(in), AT_SYMLINK_NOFOLLOW) != 0)
      throw_errno("chown " + name);
    if (!link && ::fchmodat(dirfd, name.c_str(), in.i_mode & 07777, 0) != 0)
      throw_errno("chmod " + name);
    Times t = inode_times(in);
    if (::utimensat(dirfd, name.c_str(), t.ts, AT_SYMLINK_NOFOLLOW) != 0)
      throw_errno("set times of " + name);
  }

  ext2_filsys fs_;
  const ExtractLimits& lim_;
  bool privileged_;
};

struct FsCloser {
  ext2_filsys fs;
  ~FsCloser() { ext2fs_close_free(&fs); }
};

ext2_filsys open_image(const fs::path& image) {
  static std::once_flag once;
  std::call_once(once, [] { initialize_ext2_error_table(); });
  ext2_filsys fs = nullptr;
  check(ext2fs_open(image.c_str(), EXT2_FLAG_64BITS, 0, 0, unix_io_manager, &fs),
        "open " + image.string());
  return fs;
}

// The directory at `path` in the image, symlinks resolved inside it; 0 when there is none.
ext2_ino_t find_dir(Extractor& x, ext2_filsys fs, const std::string& path) {
  ext2_ino_t ino = 0;
  errcode_t err = ext2fs_namei_follow(fs, EXT2_ROOT_INO, EXT2_ROOT_INO, path.c_str(), &ino);
  if (err == EXT2_ET_FILE_NOT_FOUND || err == EXT2_ET_SYMLINK_LOOP || err == EXT2_ET_NO_DIRECTORY)
    return 0;
  check(err, "look up " + path);
  return (x.read_inode(ino).i_mode & LINUX_S_IFMT) == LINUX_S_IFDIR ? ino : 0;
}

}  // namespace

ExtractResult extract_tree(const fs::path& image, const std::string& path, const fs::path& dest,
                           const ExtractLimits& limits) {
  if (path.size() > 4096) throw Error(ErrorKind::kInvalidArgument, "path too long: " + path);
  FsCloser closer{open_image(image)};
  Extractor x(closer.fs, limits, limits.privileged < 0 ? ::geteuid() == 0 : limits.privileged);
  const ext2_ino_t dir = find_dir(x, closer.fs, path);
  if (dir == 0) return {};
  TempDir tmp(".copy", dest.has_parent_path() ? dest.parent_path() : fs::path("."));
  UniqueFd top(::open(tmp.path().c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
  if (!top) throw_errno("open " + tmp.path().string());
  try {
    x.copy_dir(dir, top.get(), 0);
  } catch (const Error& e) {
    throw e.with_context("copying " + path + " out of " + image.string());
  }
  if (::rename(tmp.path().c_str(), dest.c_str()) != 0) {
    if (errno == ENOTEMPTY || errno == EEXIST) return {};
    throw_errno("rename " + tmp.path().string() + " to " + dest.string());
  }
  tmp.release();
  x.result.copied = true;
  return x.result;
}

}  // namespace img2vm::rootfs
