#include "img2vm/runtime/volumes.hpp"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <ctime>
#include <nlohmann/json.hpp>

#include "img2vm/base/error.hpp"
#include "img2vm/registry/store.hpp"
#include "img2vm/rootfs/extract.hpp"
#include "random_id.hpp"

namespace img2vm::runtime {

namespace fs = std::filesystem;

namespace {

constexpr const char* kMeta = "volume.json";
constexpr uint64_t kMaxMetaBytes = 64 * 1024;
constexpr int kUseAttempts = 3;

std::string now_rfc3339() {
  std::time_t t = std::time(nullptr);
  std::tm tm{};
  ::gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

bool dir_empty(const fs::path& p) {
  std::error_code ec;
  return fs::is_directory(fs::symlink_status(p, ec)) && fs::is_empty(p, ec) && !ec;
}

// The volume's directory is gone (removed while we waited for its lock).
bool unlinked(int fd) {
  struct stat st {};
  return ::fstat(fd, &st) != 0 || st.st_nlink == 0;
}

}  // namespace

bool is_volume_name(const std::string& s) {
  auto ok = [](char c) { return std::isalnum(static_cast<unsigned char>(c)) != 0; };
  if (s.size() < 2 || s.size() > 255 || !ok(s[0])) return false;
  return std::all_of(s.begin() + 1, s.end(),
                     [&](char c) { return ok(c) || c == '_' || c == '.' || c == '-'; });
}

void check_volume_name(const std::string& name) {
  if (!is_volume_name(name))
    throw Error(ErrorKind::kInvalidArgument,
                "\"" + name.substr(0, 300) +
                    "\" includes invalid characters for a local volume name, only "
                    "\"[a-zA-Z0-9][a-zA-Z0-9_.-]\" are allowed (2 to 255 bytes). If you intended "
                    "to pass a host directory, use absolute path");
}

fs::path VolumeStore::default_dir() { return registry::Store::default_home() / "volumes"; }

VolumeStore::VolumeStore(fs::path dir) : dir_(std::move(dir)) {
  std::error_code ec;
  fs::create_directories(dir_, ec);
  if (ec) throw Error(ErrorKind::kIo, "cannot create " + dir_.string() + ": " + ec.message());
}

std::optional<Volume> VolumeStore::read(const std::string& name) const {
  if (!is_volume_name(name)) return std::nullopt;
  std::error_code ec;
  if (!fs::is_directory(fs::symlink_status(path_of(name), ec))) return std::nullopt;
  Volume v{name, path_of(name) / "_data", "", false};
  try {
    auto j = nlohmann::json::parse(read_file(path_of(name) / kMeta, kMaxMetaBytes));
    v.created_at = j.value("CreatedAt", "");
    v.anonymous = j.value("Anonymous", false);
  } catch (const std::exception&) {
    // a volume made by hand or damaged: listed without its metadata
  }
  return v;
}

Volume VolumeStore::create(const std::string& name, bool anonymous) {
  const std::string n = name.empty() ? detail::random_id() : name;
  check_volume_name(n);
  if (auto v = read(n)) return *v;
  TempDir tmp(".new", dir_);
  if (::mkdir((tmp.path() / "_data").c_str(), 0755) != 0)
    throw_errno("mkdir " + (tmp.path() / "_data").string());
  nlohmann::json meta = {{"Name", n}, {"CreatedAt", now_rfc3339()}, {"Anonymous", anonymous}};
  write_file_atomic(tmp.path() / kMeta, meta.dump() + "\n");
  if (::rename(tmp.path().c_str(), path_of(n).c_str()) == 0)
    tmp.release();
  else if (errno != EEXIST && errno != ENOTEMPTY)  // else another process made it meanwhile
    throw_errno("create volume " + n);
  if (auto v = read(n)) return *v;
  throw Error(ErrorKind::kIo, "volume " + n + " vanished while being created");
}

std::optional<Volume> VolumeStore::find(const std::string& name) const { return read(name); }

std::vector<Volume> VolumeStore::list() const {
  std::vector<Volume> out;
  std::error_code ec;
  for (auto it = fs::directory_iterator(dir_, ec); !ec && it != fs::directory_iterator();
       it.increment(ec))
    if (auto v = read(it->path().filename().string())) out.push_back(std::move(*v));
  std::sort(out.begin(), out.end(),
            [](const Volume& a, const Volume& b) { return a.name < b.name; });
  return out;
}

uint64_t VolumeStore::disk_usage(const Volume& v) const {
  uint64_t n = 0;
  std::error_code ec;
  for (auto it = fs::recursive_directory_iterator(
           v.mountpoint, fs::directory_options::skip_permission_denied, ec);
       !ec && it != fs::recursive_directory_iterator(); it.increment(ec))
    if (it->is_regular_file(ec) && !it->is_symlink(ec)) n += it->file_size(ec);
  return n;
}

UniqueFd VolumeStore::open_dir(const std::string& name) const {
  if (!is_volume_name(name)) return UniqueFd();
  return UniqueFd(::open(path_of(name).c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
}

void VolumeStore::remove(const std::string& name) {
  UniqueFd fd = open_dir(name);
  if (!fd) throw Error(ErrorKind::kNotFound, "no such volume: " + name);
  if (::flock(fd.get(), LOCK_EX | LOCK_NB) != 0) {
    if (errno == EWOULDBLOCK)
      throw Error(ErrorKind::kInvalidArgument, "volume " + name + " is in use");
    throw_errno("lock volume " + name);
  }
  if (unlinked(fd.get())) throw Error(ErrorKind::kNotFound, "no such volume: " + name);
  // Out of sight at once, then deleted (TempDir removes read-only directories too).
  TempDir trash(".rm", dir_);
  if (::rename(path_of(name).c_str(), (trash.path() / "v").c_str()) != 0)
    throw_errno("remove volume " + name);
}

VolumeStore::PruneResult VolumeStore::prune(bool all) {
  PruneResult r;
  for (const Volume& v : list()) {
    if (!all && !v.anonymous) continue;
    const uint64_t bytes = disk_usage(v);
    try {
      remove(v.name);
    } catch (const Error& e) {
      if (e.kind() == ErrorKind::kInvalidArgument || e.kind() == ErrorKind::kNotFound) continue;
      throw;
    }
    r.removed.push_back(v.name);
    r.bytes += bytes;
  }
  return r;
}

VolumeLease VolumeStore::use(const std::string& name, const fs::path& rootfs,
                             const std::string& target, bool copy) {
  std::string n = name;
  for (int attempt = 0; attempt < kUseAttempts; ++attempt) {
    VolumeLease l;
    l.volume = create(n, name.empty());
    n = l.volume.name;
    l.lock = open_dir(n);
    if (!l.lock) continue;  // removed meanwhile: made again
    // The copy-in runs under the exclusive lock; a volume another run holds is not copied into.
    if (copy && dir_empty(l.volume.mountpoint) && ::flock(l.lock.get(), LOCK_EX | LOCK_NB) == 0 &&
        !unlinked(l.lock.get()))
      l.copied = rootfs::extract_tree(rootfs, target, l.volume.mountpoint).copied;
    if (::flock(l.lock.get(), LOCK_SH) != 0) throw_errno("lock volume " + n);
    if (!unlinked(l.lock.get())) return l;
  }
  throw Error(ErrorKind::kIo, "volume " + n + " keeps being removed while a run starts");
}

}  // namespace img2vm::runtime
