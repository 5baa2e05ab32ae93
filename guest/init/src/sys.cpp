#include "img2vm/init/sys.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <memory>

namespace img2vm::init {

void throw_errno(const std::string& what, int err) {
  throw Error(what + ": " + std::strerror(err));
}
void throw_errno(const std::string& what) { throw_errno(what, errno); }

UniqueFd& UniqueFd::operator=(UniqueFd&& o) noexcept {
  if (this != &o) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = o.release();
  }
  return *this;
}

UniqueFd::~UniqueFd() {
  if (fd_ >= 0) ::close(fd_);
}

int UniqueFd::release() noexcept {
  int fd = fd_;
  fd_ = -1;
  return fd;
}

std::string read_file(const std::string& path, std::size_t max_bytes) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) throw_errno("cannot open " + path);
  std::string out;
  char buf[65536];
  while (out.size() < max_bytes) {
    ssize_t n = ::read(fd.get(), buf, std::min(sizeof buf, max_bytes - out.size()));
    if (n < 0) {
      if (errno == EINTR) continue;
      throw_errno("cannot read " + path);
    }
    if (n == 0) break;
    out.append(buf, static_cast<std::size_t>(n));
  }
  return out;
}

namespace {

constexpr std::size_t kSector = 512;
constexpr std::size_t kDirectChunk = 64 * 1024;  // a multiple of any logical block size

struct FreeDeleter {
  void operator()(void* p) const noexcept { std::free(p); }
};

}  // namespace

std::string read_direct(int fd, const std::string& path, std::size_t max_bytes) {
  void* raw = nullptr;
  // 4096: the alignment of any logical block size a virtio-blk device may report.
  if (int err = ::posix_memalign(&raw, 4096, kDirectChunk); err != 0)
    throw_errno("cannot read " + path + ": allocating an aligned buffer", err);
  std::unique_ptr<char, FreeDeleter> buf(static_cast<char*>(raw));
  const std::size_t limit = (max_bytes + kSector - 1) / kSector * kSector;
  std::string out;
  while (out.size() < limit) {
    // Offsets stay multiples of kDirectChunk until the end of the device (a short read).
    ssize_t n = ::read(fd, buf.get(), std::min(kDirectChunk, limit - out.size()));
    if (n < 0) {
      if (errno == EINTR) continue;
      throw_errno("cannot read " + path + " (O_DIRECT)");
    }
    if (n == 0) break;
    out.append(buf.get(), static_cast<std::size_t>(n));
    if (static_cast<std::size_t>(n) % kSector != 0) break;  // the end of a regular file
  }
  if (out.size() > max_bytes) out.resize(max_bytes);
  return out;
}

std::string read_device(const std::string& path, std::size_t max_bytes) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) throw_errno("cannot open " + path);
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) throw_errno("cannot stat " + path);
  if (!S_ISBLK(st.st_mode)) return read_file(path, max_bytes);
  const int flags = ::fcntl(fd.get(), F_GETFL);
  if (flags < 0 || ::fcntl(fd.get(), F_SETFL, flags | O_DIRECT) != 0)
    throw_errno("cannot read " + path + ": setting O_DIRECT");
  return read_direct(fd.get(), path, max_bytes);
}

namespace {

// `content` written to `fd` from offset 0; false with errno set when a write fails.
bool write_all_at_start(int fd, std::string_view content) {
  for (std::size_t off = 0; off < content.size();) {
    ssize_t n = ::pwrite(fd, content.data() + off, content.size() - off, off_t(off));
    if (n < 0 && errno == EINTR) continue;
    if (n == 0) errno = EIO;
    if (n <= 0) return false;
    off += static_cast<std::size_t>(n);
  }
  return true;
}

}  // namespace

void replace_file(const std::string& path, std::string_view content, mode_t mode) {
  const std::string temp = path + ".img2vm-new";
  UniqueFd fd(::open(temp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, mode));
  if (!fd) throw_errno("creating " + temp);
  auto fail = [&](const std::string& what) {
    int err = errno;
    ::unlink(temp.c_str());
    throw_errno(what, err);
  };
  if (!write_all_at_start(fd.get(), content)) fail("writing " + temp);
  if (::fchmod(fd.get(), mode) != 0) fail("setting the mode of " + temp);
  if (::close(fd.release()) != 0) fail("closing " + temp);
  if (::rename(temp.c_str(), path.c_str()) != 0) fail("renaming " + temp + " to " + path);
}

void rewrite_file(const std::string& path, std::string_view content, mode_t mode) {
  struct stat st {};
  if (::lstat(path.c_str(), &st) != 0 || !S_ISREG(st.st_mode) || st.st_nlink != 1)
    return replace_file(path, content, mode);
  UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK));
  if (!fd) throw_errno("opening " + path);
  if (!write_all_at_start(fd.get(), content)) throw_errno("writing " + path);
  if (::ftruncate(fd.get(), off_t(content.size())) != 0) throw_errno("truncating " + path);
  if (::fchmod(fd.get(), mode) != 0) throw_errno("setting the mode of " + path);
  if (::close(fd.release()) != 0) throw_errno("closing " + path);
}

}  // namespace img2vm::init
