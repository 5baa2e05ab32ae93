#include "img2vm/runtime/snapshots.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <nlohmann/json.hpp>

#include "img2vm/base/digest.hpp"
#include "img2vm/base/error.hpp"
#include "img2vm/base/fd.hpp"
#include "img2vm/base/version.hpp"
#include "img2vm/registry/store.hpp"
#include "img2vm/runtime/vms.hpp"
#include "random_id.hpp"

namespace img2vm::runtime {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// The layout a snapshot's guest was booted with (runtime/machine.cpp: the snapshot layout's
// command line, disks and devices). A change there makes every older snapshot another key.
// 2: the vsock device.
constexpr int kLayoutVersion = 2;
constexpr const char* kMeta = "snapshot.json";
constexpr uint64_t kMaxMetaBytes = 64 * 1024;
constexpr const char* kTempPrefix = ".tmp-";
constexpr const char* kKernelDigests = ".kernel-digests";  // SnapshotStore::kernel_digest's cache

bool valid_key(const std::string& k) {
  return k.size() == 32 && k.find_first_not_of("0123456789abcdef") == std::string::npos;
}

uint64_t file_size_or_zero(const fs::path& p) {
  std::error_code ec;
  uint64_t n = fs::file_size(p, ec);
  return ec ? 0 : n;
}

// Bytes the files of `dir` take on disk (sparse files count their data only).
uint64_t disk_usage(const fs::path& dir) {
  uint64_t n = 0;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    struct stat st {};
    if (::lstat(e.path().c_str(), &st) == 0 && S_ISREG(st.st_mode))
      n += static_cast<uint64_t>(st.st_blocks) * 512;
  }
  return n;
}

std::optional<SnapshotInfo> read_info(const fs::path& dir) {
  if (!fs::exists(dir / "state")) return std::nullopt;  // not whole
  std::string text;
  try {
    text = read_file(dir / kMeta, kMaxMetaBytes);
  } catch (const Error&) {
    return std::nullopt;
  }
  json j = json::parse(text, nullptr, false);
  if (!j.is_object()) return std::nullopt;
  SnapshotInfo s;
  s.dir = dir;
  s.key = dir.filename().string();
  auto str = [&](const char* k) {
    return j.contains(k) && j[k].is_string() ? j[k].get<std::string>() : std::string();
  };
  auto num = [&](const char* k) {
    return j.contains(k) && j[k].is_number_unsigned() ? j[k].get<uint64_t>() : uint64_t{0};
  };
  s.image = str("image");
  s.kernel_digest = str("kernel_digest");
  s.rootfs = str("rootfs");
  s.network = str("network");
  s.created_at = str("created_at");
  s.memory_mib = num("memory_mib");
  s.cpus = static_cast<unsigned>(std::min<uint64_t>(num("cpus"), 1024));
  s.bytes = disk_usage(dir);
  if (str("key") != s.key) return std::nullopt;  // a directory renamed by hand
  return s;
}

void sync_dir(const fs::path& dir) {
  UniqueFd d(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (d) ::fsync(d.get());
}

// Removes `dir` by renaming it out of the way first, so that it disappears at once.
void remove_dir(const fs::path& dir) {
  fs::path gone = dir.parent_path() / (kTempPrefix + detail::random_id().substr(0, 16));
  std::error_code ec;
  fs::rename(dir, gone, ec);
  if (ec) throw Error(ErrorKind::kIo, "cannot remove " + dir.string() + ": " + ec.message());
  fs::remove_all(gone, ec);
}

std::string network_name(const SnapshotInputs& in) {
  switch (in.network) {
    case NetworkMode::kUser:
      return "user";
    case NetworkMode::kNone:
      return "none";
    case NetworkMode::kTap:
      return "tap";
    case NetworkMode::kNetns:
      return "netns";
  }
  return "none";
}

std::string kernel_digest(const SnapshotInputs& in) {
  return in.kernel_digest.empty() ? sha256_file(in.kernel).str() : in.kernel_digest;
}

}  // namespace

std::string snapshot_key(const SnapshotInputs& in) {
  std::string text = "img2vm-snapshot\nlayout " + std::to_string(kLayoutVersion) + "\nversion " +
                     std::string(version()) + "\nkernel " + kernel_digest(in) + "\nrootfs " +
                     in.rootfs.filename().string() + " " +
                     std::to_string(file_size_or_zero(in.rootfs)) + "\nmemory " +
                     std::to_string(in.memory_mib) + "\ncpus " + std::to_string(in.cpus) +
                     "\nnetwork " + network_name(in) + "\n";
  return Digest::sha256_of(text).hex().substr(0, 32);
}

std::string snapshot_mismatch(const SnapshotInfo& s, const SnapshotInputs& in) {
  std::string k = kernel_digest(in);
  if (s.kernel_digest != k)
    return "it was taken with kernel " + s.kernel_digest + ", this run boots " + k;
  if (s.rootfs != in.rootfs.filename().string())
    return "it was taken with root filesystem " + s.rootfs + ", this run has " +
           in.rootfs.filename().string();
  if (s.memory_mib != in.memory_mib || s.cpus != in.cpus)
    return "it was taken with " + std::to_string(s.memory_mib) + " MiB and " +
           std::to_string(s.cpus) + " vCPUs";
  if (s.network != network_name(in))
    return "it was taken with network " + s.network + ", this run has " + network_name(in);
  return {};
}

std::string SnapshotStore::kernel_digest(const fs::path& kernel) const {
  // Remembered only in a store that holds snapshots (or had some): a run without any hashes
  // nothing (choose_snapshot) and leaves no directory behind.
  if (!fs::is_directory(dir_)) return sha256_file(kernel).str();
  return sha256_file_remembered(kernel, dir_ / kKernelDigests).str();
}

fs::path SnapshotStore::default_dir() { return registry::Store::default_home() / "snapshots"; }

SnapshotStore::SnapshotStore(fs::path dir) : dir_(std::move(dir)) {}

std::optional<SnapshotInfo> SnapshotStore::find(const std::string& key) const {
  if (!valid_key(key)) return std::nullopt;
  return read_info(dir_ / key);
}

std::vector<SnapshotInfo> SnapshotStore::list() const {
  std::vector<SnapshotInfo> out;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir_, ec)) {
    std::string name = e.path().filename().string();
    if (!valid_key(name)) continue;
    if (auto s = read_info(e.path())) out.push_back(std::move(*s));
  }
  std::sort(out.begin(), out.end(), [](const SnapshotInfo& a, const SnapshotInfo& b) {
    return a.created_at != b.created_at ? a.created_at > b.created_at : a.key < b.key;
  });
  return out;
}

SnapshotInfo SnapshotStore::remove(const std::string& key_or_prefix) {
  std::vector<SnapshotInfo> match;
  for (auto& s : list())
    if (!key_or_prefix.empty() && s.key.starts_with(key_or_prefix)) match.push_back(s);
  if (match.empty())
    throw Error(ErrorKind::kNotFound, "no snapshot " + key_or_prefix + " (img2vm snapshot ls)");
  if (match.size() > 1 && match.front().key != key_or_prefix)
    throw Error(ErrorKind::kInvalidArgument, "snapshot " + key_or_prefix + " is ambiguous: " +
                                                 std::to_string(match.size()) + " match");
  remove_dir(match.front().dir);
  return match.front();
}

SnapshotStore::PruneResult SnapshotStore::prune(bool all) {
  PruneResult r;
  std::error_code ec;
  const fs::path rootfs_dir = dir_.parent_path() / "rootfs";
  for (const auto& e : fs::directory_iterator(dir_, ec)) {
    std::string name = e.path().filename().string();
    std::optional<SnapshotInfo> s = valid_key(name) ? read_info(e.path()) : std::nullopt;
    // Whole snapshots go when asked or when their root filesystem left the rootfs cache (the
    // kernel cannot be checked from here: a run with another kernel looks up another key).
    bool drop = s ? (all || !fs::exists(rootfs_dir / s->rootfs)) : name.starts_with(kTempPrefix);
    if (!s && !drop && valid_key(name)) drop = true;  // a key directory without a whole snapshot
    if (!drop) continue;
    uint64_t bytes = disk_usage(e.path());
    try {
      remove_dir(e.path());
    } catch (const Error&) {
      continue;
    }
    r.bytes += bytes;
    if (s) r.removed.push_back(s->key);
  }
  return r;
}

fs::path SnapshotStore::begin() const {
  std::error_code ec;
  fs::create_directories(dir_, ec);
  if (ec) throw Error(ErrorKind::kIo, "cannot create " + dir_.string() + ": " + ec.message());
  fs::path tmp = dir_ / (kTempPrefix + detail::random_id().substr(0, 16));
  if (!fs::create_directory(tmp, ec) || ec)
    throw Error(ErrorKind::kIo, "cannot create " + tmp.string() + ": " + ec.message());
  return tmp;
}

SnapshotInfo SnapshotStore::commit(const fs::path& tmp, const SnapshotInputs& given) const {
  SnapshotInputs in = given;
  // Hashed once, for the key and the record (and remembered for the runs).
  if (in.kernel_digest.empty()) in.kernel_digest = kernel_digest(in.kernel);
  const std::string key = snapshot_key(in);
  json j = {{"key", key},
            {"image", in.image},
            {"kernel", fs::absolute(in.kernel).string()},
            {"kernel_digest", in.kernel_digest},
            {"rootfs", in.rootfs.filename().string()},
            {"memory_mib", in.memory_mib},
            {"cpus", in.cpus},
            {"network", network_name(in)},
            {"created_at", now_rfc3339_nano()},
            {"img2vm", std::string(version())}};
  write_file_atomic(tmp / kMeta, j.dump(2) + "\n");
  const fs::path dst = dir_ / key;
  std::error_code ec;
  if (fs::exists(dst)) remove_dir(dst);
  fs::rename(tmp, dst, ec);
  if (ec)
    throw Error(ErrorKind::kIo,
                "cannot store the snapshot in " + dst.string() + ": " + ec.message());
  sync_dir(dir_);
  auto s = read_info(dst);
  if (!s) throw Error(ErrorKind::kInternal, "snapshot " + key + " is not whole after writing it");
  return *s;
}

SnapshotInfo create_snapshot(const SnapshotStore& store, const SnapshotInputs& in, MachineOptions o,
                             std::chrono::milliseconds timeout) {
  o.kernel = in.kernel;
  o.rootfs = in.rootfs;
  o.memory_mib = in.memory_mib;
  o.cpus = in.cpus;
  o.network = in.network;
  o.snapshot_layout = true;
  o.snapshot.clear();
  // A tap network's snapshot is taken with a NIC of the tap's kind and no device (no root, no
  // device on the host): the guest configures its interface only after the snapshot point,
  // and the run that resumes it has its own tap device.
  const bool tap = o.network == NetworkMode::kTap;
  if (tap) {
    o.network = NetworkMode::kNone;
    o.publish.clear();
    o.publish_all = false;
  }
  PreparedMachine p = build_machine(std::move(o));
  if (tap) {
    p.config.net.emplace();
    p.config.net->backend = std::make_shared<vm::TapShapeBackend>();
  }
  p.config.pause_at_snapshot_point = true;
  const fs::path tmp = store.begin();
  try {
    vm::Machine m(p.config);
    m.start();
    if (!m.wait_for_pause(timeout)) {
      m.stop();
      vm::MachineResult r = m.wait();
      throw Error(ErrorKind::kIo,
                  "snapshot: the guest did not reach the init's snapshot point" +
                      (r.reason == vm::ExitReason::kStopped
                           ? " within " + std::to_string(timeout.count() / 1000) + " s"
                           : ": " + r.describe()));
    }
    m.save_snapshot(tmp);
    m.stop();
    m.wait();
    return store.commit(tmp, in);
  } catch (...) {
    std::error_code ec;
    fs::remove_all(tmp, ec);
    throw;
  }
}

SnapshotChoice choose_snapshot(const SnapshotStore& store, const MachineOptions& mo,
                               const std::string& image) {
  SnapshotChoice c;
  std::vector<SnapshotInfo> all = store.list();
  if (all.empty()) return c;
  SnapshotInputs in{mo.kernel, mo.rootfs, mo.memory_mib, mo.cpus, image, {}};
  in.network = mo.network;
  in.kernel_digest = store.kernel_digest(mo.kernel);
  const std::string key = snapshot_key(in);
  const std::string why = snapshot_unsupported(mo);
  for (const SnapshotInfo& s : all) {
    if (s.rootfs != mo.rootfs.filename().string()) continue;
    const std::string mismatch = snapshot_mismatch(s, in);
    if (s.key == key && mismatch.empty()) {
      if (why.empty())
        c.snapshot = s;
      else
        c.skipped = "snapshot " + s.key + " not used: this run has " + why;
      break;
    }
    if (s.key == key || s.kernel_digest != in.kernel_digest)
      c.mismatched.push_back("snapshot " + s.key + " of this image not used: " + mismatch +
                             "; booting (img2vm snapshot create takes a new one)");
  }
  return c;
}

}  // namespace img2vm::runtime
