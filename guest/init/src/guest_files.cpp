#include "img2vm/init/guest_files.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>

#include "img2vm/base/error.hpp"
#include "img2vm/base/fd.hpp"

namespace img2vm::init {

std::optional<std::string> kernel_param(std::string_view cmdline, std::string_view key) {
  std::optional<std::string> found;
  std::size_t i = 0;
  while (i < cmdline.size()) {
    while (i < cmdline.size() && (cmdline[i] == ' ' || cmdline[i] == '\t' || cmdline[i] == '\n')) ++i;
    if (i >= cmdline.size()) break;
    std::string word;
    bool in_quotes = false;
    for (; i < cmdline.size(); ++i) {
      char c = cmdline[i];
      if (c == '"') {
        in_quotes = !in_quotes;
        continue;
      }
      if (!in_quotes && (c == ' ' || c == '\t' || c == '\n')) break;
      word += c;
    }
    if (word.size() > key.size() && word.compare(0, key.size(), key) == 0 && word[key.size()] == '=')
      found = word.substr(key.size() + 1);
    if (word == "--") break;  // the rest belongs to init's argv, not to parameters
  }
  return found;
}

rootfs::RunOverrides decode_run_param(std::string_view value) {
  std::string json;
  std::string source;
  if (value.starts_with("blk:")) {
    std::string path(value.substr(4));
    source = path;
    UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd) throw_errno("run overrides: opening " + path);
    char buf[65536];
    bool done = false;
    while (!done) {
      ssize_t n = ::read(fd.get(), buf, sizeof buf);
      if (n < 0) {
        if (errno == EINTR) continue;
        throw_errno("run overrides: reading " + path);
      }
      if (n == 0) break;
      std::string_view chunk(buf, static_cast<std::size_t>(n));
      if (auto nul = chunk.find('\0'); nul != std::string_view::npos) {
        chunk = chunk.substr(0, nul);
        done = true;
      }
      if (json.size() + chunk.size() > kMaxOverridesBytes)
        throw Error(ErrorKind::kLimit, "run overrides: " + path + " holds more than " +
                                           std::to_string(kMaxOverridesBytes) + " bytes before its NUL padding");
      json.append(chunk);
    }
  } else {
    source = "kernel parameter " + std::string(rootfs::kRunParam);
    try {
      json = rootfs::base64url_decode(value);
    } catch (const Error& e) {
      throw e.with_context("run overrides: " + source);
    }
  }
  try {
    return rootfs::run_overrides_from_json(json);
  } catch (const Error& e) {
    throw e.with_context("run overrides from " + source);
  }
}

bool needs_generated_file(const std::filesystem::path& path) {
  struct stat st {};
  if (::lstat(path.c_str(), &st) != 0) return errno == ENOENT;
  if (S_ISLNK(st.st_mode)) {
    struct stat target {};
    return ::stat(path.c_str(), &target) != 0 && errno == ENOENT;  // dangling
  }
  if (!S_ISREG(st.st_mode)) return false;
  if (st.st_size == 0) return true;
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW));
  if (!fd) return false;
  std::string head(kGeneratedMarker.size(), '\0');
  ssize_t n = ::pread(fd.get(), head.data(), head.size(), 0);
  return n == static_cast<ssize_t>(head.size()) && head == kGeneratedMarker;
}

std::string hosts_content(std::string_view hostname, std::string_view address) {
  std::string h(hostname), a = address.empty() ? "127.0.1.1" : std::string(address);
  return std::string(kGeneratedMarker) + "\n" +
         "127.0.0.1\tlocalhost\n"
         "::1\tlocalhost ip6-localhost ip6-loopback\n"
         "fe00::0\tip6-localnet\n"
         "ff00::0\tip6-mcastprefix\n"
         "ff02::1\tip6-allnodes\n"
         "ff02::2\tip6-allrouters\n" +
         a + "\t" + h + "\n";
}

std::string resolv_conf_content(const std::vector<std::string>& nameservers) {
  std::string out = std::string(kGeneratedMarker) + "\n";
  for (const auto& ns : nameservers) out += "nameserver " + ns + "\n";
  return out;
}

std::string hostname_content(std::string_view hostname) { return std::string(hostname) + "\n"; }

bool valid_hostname(std::string_view name) {
  if (name.empty() || name.size() > 64) return false;  // HOST_NAME_MAX
  std::size_t label = 0;
  char prev = '.';
  for (char c : name) {
    bool alnum = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
    if (c == '.') {
      if (label == 0 || prev == '-') return false;
      label = 0;
    } else if (c == '-') {
      if (label == 0) return false;
      ++label;
    } else if (alnum) {
      ++label;
    } else {
      return false;
    }
    if (label > 63) return false;
    prev = c;
  }
  return prev != '-' && prev != '.';
}

}  // namespace img2vm::init
