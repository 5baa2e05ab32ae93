#include "img2vm/init/sys.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

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

void replace_file(const std::string& path, std::string_view content, mode_t mode) {
  const std::string temp = path + ".img2vm-new";
  UniqueFd fd(::open(temp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, mode));
  if (!fd) throw_errno("creating " + temp);
  auto fail = [&](const std::string& what) {
    int err = errno;
    ::unlink(temp.c_str());
    throw_errno(what, err);
  };
  for (std::size_t off = 0; off < content.size();) {
    ssize_t n = ::write(fd.get(), content.data() + off, content.size() - off);
    if (n < 0 && errno == EINTR) continue;
    if (n == 0) errno = EIO;
    if (n <= 0) fail("writing " + temp);
    off += static_cast<std::size_t>(n);
  }
  if (::fchmod(fd.get(), mode) != 0) fail("setting the mode of " + temp);
  if (::fsync(fd.get()) != 0) fail("syncing " + temp);
  if (::close(fd.release()) != 0) fail("closing " + temp);
  if (::rename(temp.c_str(), path.c_str()) != 0) fail("renaming " + temp + " to " + path);
}

}  // namespace img2vm::init
