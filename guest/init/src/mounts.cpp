#include "img2vm/init/mounts.hpp"

#include <sys/mount.h>
#include <sys/stat.h>

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

}  // namespace img2vm::init
