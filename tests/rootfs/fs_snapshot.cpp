#include "fs_snapshot.hpp"

#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <stdexcept>

#include "img2vm/base/fd.hpp"
#include "process.hpp"

namespace img2vm::testing {

namespace fs = std::filesystem;

FsTree read_host_tree(const fs::path& root) {
  FsTree out;
  auto add = [&](const fs::path& p, const std::string& key) {
    struct stat st;
    if (::lstat(p.c_str(), &st) != 0) throw std::runtime_error("lstat " + p.string());
    FsEntry e;
    e.ino = st.st_ino;
    e.mode = st.st_mode & 07777;
    e.uid = st.st_uid;
    e.gid = st.st_gid;
    e.nlink = static_cast<uint32_t>(st.st_nlink);
    e.mtime = st.st_mtim.tv_sec;
    e.mtime_nsec = static_cast<uint32_t>(st.st_mtim.tv_nsec);
    e.size = static_cast<uint64_t>(st.st_size);
    if (S_ISREG(st.st_mode)) {
      e.type = 'f';
      e.content = read_file(p);
    } else if (S_ISDIR(st.st_mode)) {
      e.type = 'd';
    } else if (S_ISLNK(st.st_mode)) {
      e.type = 'l';
      e.target = fs::read_symlink(p).string();
    } else if (S_ISCHR(st.st_mode) || S_ISBLK(st.st_mode)) {
      e.type = S_ISCHR(st.st_mode) ? 'c' : 'b';
      e.major = major(st.st_rdev);
      e.minor = minor(st.st_rdev);
    } else if (S_ISFIFO(st.st_mode)) {
      e.type = 'p';
    }
    char names[65536];
    ssize_t n = ::llistxattr(p.c_str(), names, sizeof names);
    for (ssize_t i = 0; i < n;) {
      std::string name(names + i);
      i += static_cast<ssize_t>(name.size()) + 1;
      char val[65536];
      ssize_t vl = ::lgetxattr(p.c_str(), name.c_str(), val, sizeof val);
      if (vl >= 0) e.xattrs[name] = std::string(val, static_cast<size_t>(vl));
    }
    out[key] = e;
  };
  add(root, "/");
  for (auto it = fs::recursive_directory_iterator(root); it != fs::recursive_directory_iterator();
       ++it) {
    add(it->path(), "/" + it->path().lexically_relative(root).string());
  }
  return out;
}

std::vector<std::vector<std::string>> hardlink_groups(const FsTree& t) {
  std::map<uint64_t, std::vector<std::string>> by;
  for (const auto& [p, e] : t)
    if (e.type != 'd') by[e.ino].push_back(p);
  std::vector<std::vector<std::string>> out;
  for (auto& [ino, v] : by)
    if (v.size() > 1) {
      std::sort(v.begin(), v.end());
      out.push_back(v);
    }
  std::sort(out.begin(), out.end());
  return out;
}

int e2fsck(const fs::path& image, std::string* log) {
  CommandResult r = run_command({"e2fsck", "-fn", image.string()});
  if (log) *log = r.out + r.err;
  return r.exit_code;
}

rootfs::ImageInput image_input(const BuiltImage& img, const fs::path& dir) {
  rootfs::ImageInput in;
  in.config_json = img.config.data;
  in.manifest_digest = img.manifest.digest;
  fs::create_directories(dir / "blobs");
  for (const auto& l : img.layers) {
    fs::path p = dir / "blobs" / l.digest.hex();
    write_file_atomic(p, l.data);
    in.layers.push_back(layers::LayerSource::from_file(l.media_type, l.digest, l.size(), p));
  }
  return in;
}

}  // namespace img2vm::testing

#include <archive.h>
#include <archive_entry.h>

#include <nlohmann/json.hpp>

namespace img2vm::testing {

namespace {

la_ssize_t append(archive*, void* ud, const void* buf, size_t n) {
  static_cast<std::string*>(ud)->append(static_cast<const char*>(buf), n);
  return static_cast<la_ssize_t>(n);
}

// The sha256 of `blob` decompressed (libarchive's raw reader); of the blob itself when it is
// plain or does not decode.
Digest content_digest(const std::string& blob) {
  std::unique_ptr<archive, decltype(&archive_read_free)> a(archive_read_new(), archive_read_free);
  archive_read_support_filter_gzip(a.get());
  archive_read_support_filter_zstd(a.get());
  archive_read_support_format_raw(a.get());
  archive_entry* e = nullptr;
  if (archive_read_open_memory(a.get(), blob.data(), blob.size()) != ARCHIVE_OK ||
      archive_filter_count(a.get()) < 2 || archive_read_next_header(a.get(), &e) != ARCHIVE_OK)
    return Digest::sha256_of(blob);
  Sha256 h;
  char buf[1 << 16];
  for (la_ssize_t n; (n = archive_read_data(a.get(), buf, sizeof buf)) != 0;) {
    if (n < 0) return Digest::sha256_of(blob);
    h.update(buf, static_cast<size_t>(n));
  }
  return h.finish();
}

}  // namespace

rootfs::ImageInput raw_input(const std::vector<RawLayer>& layers_in, const fs::path& dir) {
  rootfs::ImageInput in;
  nlohmann::json config = {
      {"architecture", "amd64"}, {"os", "linux"}, {"config", {{"Cmd", {"/bin/sh"}}}}};
  config["rootfs"] = {{"type", "layers"}, {"diff_ids", nlohmann::json::array()}};
  in.manifest_digest = Digest::sha256_of("raw-input");
  fs::create_directories(dir);
  for (const RawLayer& l : layers_in) {
    Digest d = Digest::sha256_of(l.data);
    fs::path p = dir / d.hex();
    write_file_atomic(p, l.data);
    in.layers.push_back(layers::LayerSource::from_file(l.media_type, d, l.data.size(), p));
    config["rootfs"]["diff_ids"].push_back((l.diff_id ? *l.diff_id : content_digest(l.data)).str());
  }
  in.config_json = config.dump();
  return in;
}

std::string sparse_tar(const std::string& name, uint64_t size,
                       const std::vector<std::pair<uint64_t, std::string>>& chunks) {
  archive* a = archive_write_new();
  std::string out;
  archive_write_set_format_pax(a);
  archive_write_open2(a, &out, nullptr, append, nullptr, nullptr);
  archive_entry* e = archive_entry_new();
  archive_entry_set_filetype(e, AE_IFREG);
  archive_entry_set_perm(e, 0644);
  archive_entry_set_pathname(e, name.c_str());
  archive_entry_set_size(e, static_cast<la_int64_t>(size));
  archive_entry_set_mtime(e, 1700000000, 0);
  for (const auto& [off, data] : chunks)
    archive_entry_sparse_add_entry(e, static_cast<la_int64_t>(off),
                                   static_cast<la_int64_t>(data.size()));
  if (archive_write_header(a, e) != ARCHIVE_OK) throw std::runtime_error(archive_error_string(a));
  // libarchive's sparse writer takes the whole logical content and stores only the data runs.
  std::string full(size, '\0');
  for (const auto& [off, data] : chunks) full.replace(off, data.size(), data);
  size_t off = 0;
  while (off < full.size()) {
    size_t n = std::min<size_t>(full.size() - off, 1 << 20);
    archive_write_data(a, full.data() + off, n);
    off += n;
  }
  archive_entry_free(e);
  archive_write_close(a);
  archive_write_free(a);
  return out;
}

}  // namespace img2vm::testing
