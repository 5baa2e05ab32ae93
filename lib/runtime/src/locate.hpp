// Finding a program img2vm ships: the file an environment variable names, else the first of a
// list of places that holds it.
#pragma once

#include <cstdlib>
#include <filesystem>
#include <initializer_list>
#include <string>

#include "img2vm/base/error.hpp"

namespace img2vm::runtime::detail {

// $`env` when set (it must exist: else Error(kNotFound) "<label> <path> (from <env>) does not
// exist"), else the first existing regular file of `candidates` (empty ones skipped), else
// Error(kNotFound, missing).
inline std::filesystem::path locate(const char* env, const std::string& label,
                                    std::initializer_list<std::filesystem::path> candidates,
                                    const std::string& missing) {
  if (const char* e = std::getenv(env); e && *e) {
    if (!std::filesystem::is_regular_file(e))
      throw Error(ErrorKind::kNotFound, label + " " + e + " (from " + env + ") does not exist");
    return e;
  }
  for (const auto& p : candidates)
    if (!p.empty() && std::filesystem::is_regular_file(p)) return p;
  throw Error(ErrorKind::kNotFound, missing);
}

// `name` in the libexec/img2vm directory of the prefix the running program is installed in
// (<dir of /proc/self/exe>/../libexec/img2vm), so that an install moved elsewhere after
// `cmake --install` still finds its own programs; empty when /proc/self/exe cannot be read.
inline std::filesystem::path beside_own_install(const std::string& name) {
  std::error_code ec;
  std::filesystem::path self = std::filesystem::read_symlink("/proc/self/exe", ec);
  if (ec) return {};
  return self.parent_path().parent_path() / "libexec" / "img2vm" / name;
}

// `name` in the directory of the running program (the build tree keeps them together).
inline std::filesystem::path beside_own_program(const std::string& name) {
  std::error_code ec;
  std::filesystem::path self = std::filesystem::read_symlink("/proc/self/exe", ec);
  if (ec) return {};
  return self.parent_path() / name;
}

}  // namespace img2vm::runtime::detail
