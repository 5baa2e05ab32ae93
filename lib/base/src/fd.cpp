#include "img2vm/base/fd.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <random>
#include <system_error>
#include <vector>

#include "img2vm/base/error.hpp"

namespace img2vm {

namespace fs = std::filesystem;

void UniqueFd::reset(int fd) noexcept {
  if (fd_ >= 0) ::close(fd_);
  fd_ = fd;
}

UniqueFd open_file(const fs::path& path, int flags, int mode) {
  int fd;
  do {
    fd = ::open(path.c_str(), flags | O_CLOEXEC, mode);
  } while (fd < 0 && errno == EINTR);
  if (fd < 0) throw_errno("cannot open " + path.string());
  return UniqueFd(fd);
}

std::string read_file(const fs::path& path, uint64_t max_bytes) {
  UniqueFd fd = open_file(path, O_RDONLY);
  std::string out;
  char buf[65536];
  for (;;) {
    ssize_t n = ::read(fd.get(), buf, sizeof buf);
    if (n < 0) {
      if (errno == EINTR) continue;
      throw_errno("cannot read " + path.string());
    }
    if (n == 0) break;
    if (static_cast<uint64_t>(n) > max_bytes - out.size())
      throw Error(ErrorKind::kLimit,
                  path.string() + " is larger than " + std::to_string(max_bytes) + " bytes");
    out.append(buf, static_cast<size_t>(n));
  }
  return out;
}

void write_all(int fd, std::string_view data, std::string_view what) {
  while (!data.empty()) {
    ssize_t n = ::write(fd, data.data(), data.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      throw_errno("cannot write " + std::string(what));
    }
    data.remove_prefix(static_cast<size_t>(n));
  }
}

void pwrite_all(int fd, std::string_view data, uint64_t off, std::string_view what) {
  while (!data.empty()) {
    ssize_t n = ::pwrite(fd, data.data(), data.size(), static_cast<off_t>(off));
    if (n < 0) {
      if (errno == EINTR) continue;
      throw_errno("cannot write " + std::string(what));
    }
    data.remove_prefix(static_cast<size_t>(n));
    off += static_cast<uint64_t>(n);
  }
}

uint64_t copy_range(int in, uint64_t in_off, int out, uint64_t out_off, uint64_t len,
                    std::string_view what) {
  bool cfr = true;
  std::vector<char> buf;
  uint64_t copied = 0;
  while (copied < len) {
    const uint64_t want = len - copied;
    ssize_t r;
    if (cfr) {
      loff_t io = static_cast<loff_t>(in_off + copied), oo = static_cast<loff_t>(out_off + copied);
      r = ::copy_file_range(in, &io, out, &oo, std::min<uint64_t>(want, 1u << 30), 0);
      if (r < 0 && errno == EINTR) continue;
      if (r < 0 && (errno == EXDEV || errno == ENOSYS || errno == EINVAL || errno == EOPNOTSUPP)) {
        cfr = false;  // another file system, or a kernel without it: plain reads and writes
        continue;
      }
      if (r < 0) throw_errno("cannot copy " + std::string(what));
    } else {
      if (buf.empty()) buf.resize(1 << 20);
      r = ::pread(in, buf.data(), std::min<uint64_t>(want, buf.size()),
                  static_cast<off_t>(in_off + copied));
      if (r < 0 && errno == EINTR) continue;
      if (r < 0) throw_errno("cannot copy " + std::string(what));
      pwrite_all(out, std::string_view(buf.data(), static_cast<size_t>(r)), out_off + copied, what);
    }
    if (r == 0) break;  // the end of `in`
    copied += static_cast<uint64_t>(r);
  }
  return copied;
}

TempDir::TempDir(std::string_view prefix, const fs::path& parent) {
  fs::path base = parent;
  if (base.empty()) {
    const char* t = std::getenv("TMPDIR");
    base = (t && *t) ? fs::path(t) : fs::path("/tmp");
  }
  std::string tmpl = (base / (std::string(prefix) + ".XXXXXX")).string();
  if (::mkdtemp(tmpl.data()) == nullptr)
    throw_errno("cannot create a temporary directory in " + base.string());
  path_ = tmpl;
}

TempDir::~TempDir() {
  if (path_.empty()) return;
  std::error_code ec;
  // Make everything writable first so that read-only directories made by tests go too.
  for (auto it = fs::recursive_directory_iterator(path_, ec);
       !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
    if (it->is_directory(ec) && !it->is_symlink(ec))
      fs::permissions(it->path(), fs::perms::owner_all, fs::perm_options::add, ec);
  }
  fs::remove_all(path_, ec);
}

fs::path TempDir::release() {
  fs::path p = std::move(path_);
  path_.clear();
  return p;
}

namespace {
std::string random_suffix() {
  static thread_local std::mt19937_64 rng{std::random_device{}()};
  static const char kHex[] = "0123456789abcdef";
  std::string s(12, '0');
  for (auto& c : s) c = kHex[rng() & 15];
  return s;
}
}  // namespace

AtomicFile::AtomicFile(fs::path final_path, int mode) : final_(std::move(final_path)) {
  fs::path dir = final_.parent_path();
  if (dir.empty()) dir = ".";
  temp_ = dir / ("." + final_.filename().string() + ".tmp-" + random_suffix());
  fd_ = open_file(temp_, O_WRONLY | O_CREAT | O_EXCL, mode);
}

AtomicFile::~AtomicFile() {
  if (!committed_) {
    fd_.reset();
    ::unlink(temp_.c_str());
  }
}

void AtomicFile::commit() {
  if (::fsync(fd_.get()) != 0) throw_errno("cannot sync " + temp_.string());
  if (::close(fd_.release()) != 0) throw_errno("cannot close " + temp_.string());
  if (::rename(temp_.c_str(), final_.c_str()) != 0)
    throw_errno("cannot rename into " + final_.string());
  committed_ = true;
  fs::path dir = final_.parent_path();
  if (dir.empty()) dir = ".";
  int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
}

void write_file_atomic(const fs::path& path, std::string_view data, int mode) {
  AtomicFile f(path, mode);
  f.write(data);
  f.commit();
}

}  // namespace img2vm
