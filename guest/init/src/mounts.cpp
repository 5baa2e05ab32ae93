#include "img2vm/init/mounts.hpp"

#include <fcntl.h>
#include <linux/openat2.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace img2vm::init {

namespace {

bool is_tmpfs(const guestabi::MountSpec& m) { return m.type == guestabi::MountSpec::Type::kTmpfs; }

std::string octal(uint32_t v) {
  std::string out;
  do {
    out.insert(out.begin(), static_cast<char>('0' + (v & 7)));
    v >>= 3;
  } while (v);
  return out;
}

}  // namespace

std::string tmpfs_data(uint64_t size, uint32_t mode) {
  std::string data = size ? "size=" + std::to_string(size) + "," : "";
  return data + "mode=" + octal(mode ? mode : 01777);
}

MountCall mount_call(const guestabi::MountSpec& m) {
  MountCall c;
  c.flags = m.readonly ? MS_RDONLY : 0;
  if (is_tmpfs(m)) {
    c.source = c.fstype = "tmpfs";
    c.flags |= MS_NOSUID | MS_NODEV;
    c.data = tmpfs_data(m.size, m.mode);
  } else {
    c.source = m.tag;
    c.fstype = "virtiofs";
  }
  return c;
}

std::string mount_name(const guestabi::MountSpec& m) {
  if (m.type == guestabi::MountSpec::Type::kFile) return "file";
  return is_tmpfs(m) ? "tmpfs" : "virtiofs '" + m.tag + "'";
}

std::string mount_error_text(const guestabi::MountSpec& m, int err) {
  std::string text = std::strerror(err);
  if (is_tmpfs(m)) return text;
  if (err == ENODEV) return text + " (the guest kernel has no virtio-fs)";
  if (err == EINVAL) return text + " (no virtio-fs device has this tag)";
  return text;
}

std::vector<std::string> path_prefixes(std::string_view path) {
  std::vector<std::string> out;
  for (std::size_t pos = 0; pos < path.size();) {
    std::size_t next = path.find('/', pos + 1);
    if (next == std::string_view::npos) next = path.size();
    if (next > pos + 1) out.emplace_back(path.substr(0, next));
    pos = next;
  }
  return out;
}

void make_directories(const std::string& dir, mode_t mode) {
  for (const std::string& p : path_prefixes(dir)) {
    if (::mkdir(p.c_str(), mode) != 0 && errno != EEXIST) throw_errno("creating " + p);
    struct stat st {};
    if (::stat(p.c_str(), &st) != 0) throw_errno("creating " + p);
    if (!S_ISDIR(st.st_mode)) throw NotADirectory(p);
  }
}

namespace {

// `path` (relative to the root, or "." for it) resolved inside `root_fd`, opened with `flags`.
int open_in_root(int root_fd, const std::string& path, int flags) {
  open_how how{};
  how.flags = static_cast<uint64_t>(flags | O_CLOEXEC);
  how.resolve = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS;
  long fd = ::syscall(SYS_openat2, root_fd, path.c_str(), &how, sizeof how);
  if (fd < 0 && errno == ENOSYS) return ::openat(root_fd, path.c_str(), flags | O_CLOEXEC);
  return static_cast<int>(fd);
}

std::string proc_fd(int fd) { return "/proc/self/fd/" + std::to_string(fd); }

}  // namespace

UniqueFd open_file_target(int root_fd, const std::string& target) {
  if (target.size() < 2 || target[0] != '/') throw Error(target + ": not an absolute path");
  const std::string rel = target.substr(1);
  UniqueFd fd(open_in_root(root_fd, rel, O_PATH));
  if (!fd && errno == ENOENT) {
    // Missing: the parents first (inside the root), then the file in the last of them.
    const auto slash = rel.rfind('/');
    const std::string parent = slash == std::string::npos ? "." : rel.substr(0, slash);
    const std::string name = slash == std::string::npos ? rel : rel.substr(slash + 1);
    if (name.empty() || name == "." || name == "..") throw Error(target + ": not a file's path");
    UniqueFd dir(open_in_root(root_fd, ".", O_PATH | O_DIRECTORY));
    if (!dir) throw_errno("opening the root");
    for (const std::string& p : path_prefixes("/" + (parent == "." ? "" : parent))) {
      const std::string prel = p.substr(1);
      UniqueFd next(open_in_root(root_fd, prel, O_PATH | O_DIRECTORY));
      if (!next && errno == ENOENT) {
        const std::string comp = prel.substr(prel.rfind('/') + 1);
        if (::mkdirat(dir.get(), comp.c_str(), 0755) != 0 && errno != EEXIST)
          throw_errno("creating " + p);
        next = UniqueFd(open_in_root(root_fd, prel, O_PATH | O_DIRECTORY));
      }
      if (!next) {
        if (errno == ENOTDIR) throw NotADirectory(p);
        throw_errno("creating " + p);
      }
      dir = std::move(next);
    }
    struct stat st {};
    if (::fstatat(dir.get(), name.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISLNK(st.st_mode) &&
        ::unlinkat(dir.get(), name.c_str(), 0) != 0)
      throw_errno("replacing the dangling symlink " + target);
    UniqueFd made(::openat(dir.get(), name.c_str(),
                           O_CREAT | O_EXCL | O_WRONLY | O_NOFOLLOW | O_CLOEXEC | O_NOCTTY, 0644));
    if (!made && errno != EEXIST) throw_errno("creating " + target);
    fd = UniqueFd(open_in_root(root_fd, rel, O_PATH));
  }
  if (!fd) throw_errno(target);
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) throw_errno(target);
  if (S_ISDIR(st.st_mode)) throw Error(target + " is a directory");
  return fd;
}

FileMounts::~FileMounts() {
  if (!dir_) return;
  dir_ = UniqueFd();
  ::umount2(staging_.c_str(), MNT_DETACH);
  ::rmdir(staging_.c_str());
}

void FileMounts::place(int root_fd, const guestabi::MountSpec& m) {
  constexpr unsigned long kFlags = MS_NOSUID | MS_NODEV;
  if (!dir_) {
    if (::mkdir(staging_.c_str(), 0700) != 0) throw_errno("creating " + staging_);
    if (::mount("tmpfs", staging_.c_str(), "tmpfs", kFlags, "mode=0700") != 0) {
      int err = errno;
      ::rmdir(staging_.c_str());
      throw_errno("mounting a tmpfs on " + staging_, err);
    }
    dir_ = UniqueFd(::open(staging_.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC));
    if (!dir_) {
      int err = errno;
      ::umount2(staging_.c_str(), MNT_DETACH);
      ::rmdir(staging_.c_str());
      throw_errno("opening " + staging_, err);
    }
  }
  const std::string name = std::to_string(count_++);
  UniqueFd copy(
      ::openat(dir_.get(), name.c_str(), O_CREAT | O_EXCL | O_RDWR | O_NOFOLLOW | O_CLOEXEC, 0600));
  if (!copy) throw_errno("creating its copy");
  for (std::size_t off = 0; off < m.content.size();) {
    ssize_t n = ::write(copy.get(), m.content.data() + off, m.content.size() - off);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) throw_errno("writing its copy");
    off += static_cast<std::size_t>(n);
  }
  // The owner before the mode: chown clears the set-id bits.
  if (::fchown(copy.get(), m.uid, m.gid) != 0) throw_errno("setting its owner");
  if (::fchmod(copy.get(), m.mode & 07777) != 0) throw_errno("setting its mode");
  UniqueFd target = open_file_target(root_fd, m.target);
  if (::mount(proc_fd(copy.get()).c_str(), proc_fd(target.get()).c_str(), nullptr, MS_BIND,
              nullptr) != 0)
    throw_errno("bind-mounting its copy");
  if (m.readonly) {
    // The mount just made, as the target's path now leads to it.
    UniqueFd top = open_file_target(root_fd, m.target);
    if (::mount(nullptr, proc_fd(top.get()).c_str(), nullptr,
                MS_BIND | MS_REMOUNT | MS_RDONLY | kFlags, nullptr) != 0)
      throw_errno("making it read-only");
  }
}

}  // namespace img2vm::init
