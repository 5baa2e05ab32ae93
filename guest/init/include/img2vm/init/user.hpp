// The image's User ("name", "uid", "uid:gid", "name:group", ...) resolved from the image's own
// /etc/passwd and /etc/group, as runc does it (no NSS: the init is static and the image's libc
// is none of our business).
#pragma once

#include <sys/types.h>

#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

namespace img2vm::init {

struct ExecUser {
  uid_t uid = 0;
  gid_t gid = 0;
  std::vector<gid_t> groups;  // supplementary groups
  std::string home = "/";

  friend bool operator==(const ExecUser&, const ExecUser&) = default;
};

// `root` is the directory holding the guest's / (so tests can use a fake rootfs). Empty spec is
// root. A numeric uid or gid need not exist in the files; an unknown name throws
// Error naming it. Missing /etc/passwd or /etc/group count as empty files.
ExecUser resolve_user(const std::filesystem::path& root, std::string_view spec);

}  // namespace img2vm::init
