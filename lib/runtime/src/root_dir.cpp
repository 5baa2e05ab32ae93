#include "img2vm/runtime/root_dir.hpp"

#include <archive.h>
#include <archive_entry.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <memory>

#include "img2vm/base/error.hpp"
#include "img2vm/base/fd.hpp"
#include "img2vm/guestabi/error.hpp"
#include "img2vm/guestabi/paths.hpp"

namespace img2vm::runtime {

namespace fs = std::filesystem;

namespace {

constexpr uint64_t kMaxInit = 64u << 20;

// The regular file `name` in the directory `dir_fd`, at most `max` bytes; nullopt when it does not
// exist. `flags` is added to the open's (O_NOFOLLOW, say).
std::optional<std::string> read_regular_at(int dir_fd, const char* name, const fs::path& shown,
                                           uint64_t max, int flags) {
  UniqueFd fd(::openat(dir_fd, name, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY | flags));
  if (!fd) {
    if (errno == ENOENT) return std::nullopt;
    if (errno == ELOOP)
      throw Error(ErrorKind::kInvalidArgument, shown.string() + " is a symbolic link");
    throw_errno("cannot open " + shown.string());
  }
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) throw_errno("cannot stat " + shown.string());
  if (!S_ISREG(st.st_mode))
    throw Error(ErrorKind::kInvalidArgument, shown.string() + " is not a regular file");
  if (uint64_t(st.st_size) > max)
    throw Error(ErrorKind::kLimit,
                shown.string() + " is larger than " + std::to_string(max) + " bytes");
  return read_file("/proc/self/fd/" + std::to_string(fd.get()), max);
}

// DIR/.img2vm/config.json, not following symlinks on the way.
std::optional<guestabi::RuntimeConfig> own_config(const fs::path& dir, fs::path& file) {
  file = dir / std::string(guestabi::kConfigPath).substr(1);
  UniqueFd root = open_file(dir, O_RDONLY | O_DIRECTORY);
  const std::string reserved = std::string(guestabi::kReservedDir).substr(1);
  UniqueFd sub(
      ::openat(root.get(), reserved.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
  if (!sub) {
    if (errno == ENOENT) return std::nullopt;
    throw_errno("cannot open " + (dir / reserved).string() + " as a directory");
  }
  auto text = read_regular_at(sub.get(), "config.json", file, guestabi::kMaxConfigJson, O_NOFOLLOW);
  if (!text) return std::nullopt;
  try {
    return guestabi::runtime_config_from_json(*text);
  } catch (const guestabi::Error& e) {
    throw Error(ErrorKind::kInvalidArgument, file.string() + ": " + e.what());
  }
}

// DIR/../config.json when it is an OCI runtime-spec bundle config whose root is DIR.
std::optional<guestabi::RuntimeConfig> bundle_config(const fs::path& dir, fs::path& file) {
  const fs::path bundle = dir.parent_path();
  file = bundle / "config.json";
  UniqueFd bundle_fd = open_file(bundle, O_RDONLY | O_DIRECTORY);
  auto text = read_regular_at(bundle_fd.get(), "config.json", file, guestabi::kMaxOciConfigJson, 0);
  if (!text) return std::nullopt;
  std::optional<guestabi::OciBundleConfig> b;
  try {
    b = guestabi::oci_bundle_config(*text);
  } catch (const guestabi::Error& e) {
    throw Error(ErrorKind::kInvalidArgument, file.string() + ": " + e.what());
  }
  if (!b || b->root_path.empty()) return std::nullopt;
  std::error_code ec;
  fs::path root = fs::canonical(bundle / b->root_path, ec);  // an absolute root.path replaces
  if (ec || root != dir) return std::nullopt;
  return b->config;
}

}  // namespace

RootDirectory open_root_directory(const fs::path& dir, bool read_only) {
  std::error_code ec;
  fs::file_status st = fs::status(dir, ec);
  if (ec || !fs::exists(st))
    throw Error(ErrorKind::kNotFound, "--rootfs: " + dir.string() + " does not exist");
  if (!fs::is_directory(st))
    throw Error(ErrorKind::kInvalidArgument, "--rootfs: " + dir.string() + " is not a directory");
  RootDirectory r;
  r.path = fs::canonical(dir);
  r.read_only = read_only;
  fs::path file;
  if ((r.config = own_config(r.path, file)) || (r.config = bundle_config(r.path, file)))
    r.config_file = file;
  return r;
}

void check_root_command(const RootDirectory& root, const guestabi::RunOverrides& o) {
  if (root.config) return;  // its command, or the init's "no command specified"
  bool command = (o.cmd && !o.cmd->empty()) || (o.entrypoint && !o.entrypoint->empty());
  if (!command)
    throw Error(ErrorKind::kInvalidArgument,
                "--rootfs: " + root.path.string() + " has no image config (" +
                    std::string(guestabi::kConfigPath).substr(1) +
                    " in it, or an OCI bundle's config.json beside it): give the command to run");
}

std::string init_initramfs(const fs::path& init) {
  std::string bytes = read_file(init, kMaxInit);
  std::string out;
  std::unique_ptr<archive, decltype(&archive_write_free)> a(archive_write_new(),
                                                            &archive_write_free);
  std::unique_ptr<archive_entry, decltype(&archive_entry_free)> e(archive_entry_new(),
                                                                  &archive_entry_free);
  if (!a || !e) throw Error(ErrorKind::kInternal, "initramfs: out of memory");
  auto check = [&](int r, const char* what) {
    if (r != ARCHIVE_OK)
      throw Error(ErrorKind::kInternal,
                  std::string("initramfs: ") + what + ": " +
                      (archive_error_string(a.get()) ? archive_error_string(a.get())
                                                     : "libarchive failed"));
  };
  check(archive_write_set_format_cpio_newc(a.get()), "cpio newc");
  check(archive_write_add_filter_none(a.get()), "no compression");
  check(archive_write_set_bytes_per_block(a.get(), 0), "block size");
  auto write = [](archive*, void* client, const void* buf, size_t n) -> la_ssize_t {
    static_cast<std::string*>(client)->append(static_cast<const char*>(buf), n);
    return la_ssize_t(n);
  };
  check(archive_write_open(a.get(), &out, nullptr, write, nullptr), "open");
  auto add = [&](std::string_view path, mode_t type, const std::string& data) {
    archive_entry_clear(e.get());
    archive_entry_set_pathname(e.get(), std::string(path.substr(1)).c_str());
    archive_entry_set_filetype(e.get(), type);
    archive_entry_set_perm(e.get(), 0755);
    archive_entry_set_uid(e.get(), 0);
    archive_entry_set_gid(e.get(), 0);
    archive_entry_set_nlink(e.get(), type == AE_IFDIR ? 2 : 1);
    archive_entry_set_size(e.get(), la_int64_t(data.size()));
    check(archive_write_header(a.get(), e.get()), "header");
    if (!data.empty() &&
        archive_write_data(a.get(), data.data(), data.size()) != la_ssize_t(data.size()))
      check(ARCHIVE_FATAL, "data");
  };
  add(guestabi::kReservedDir, AE_IFDIR, {});
  add(guestabi::kInitPath, AE_IFREG, bytes);
  check(archive_write_close(a.get()), "close");
  return out;
}

}  // namespace img2vm::runtime
