#include "img2vm/init/guest_files.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>

#include "img2vm/guestabi/cmdline.hpp"
#include "img2vm/guestabi/error.hpp"
#include "img2vm/guestabi/overrides_disk.hpp"
#include "img2vm/init/sys.hpp"

namespace img2vm::init {

namespace {

constexpr std::size_t kFirstOverridesRead = 4096;

std::string snapshot_mode_text() { return "snapshot mode (" + guestabi::snapshot_param() + ")"; }

}  // namespace

guestabi::RunOverrides decode_run_param(std::string_view value, bool snapshot) {
  if (!value.starts_with(guestabi::kRunParamDiskPrefix)) {
    if (snapshot)
      throw Error("run overrides: inline " + std::string(guestabi::kRunParam) + "= in " +
                  snapshot_mode_text() +
                  ": the command line is frozen in the snapshot; they must come on a disk (" +
                  guestabi::run_overrides_disk_param("/dev/vdX") + ")");
    try {
      return guestabi::decode_inline_run_param(value);
    } catch (const guestabi::Error& e) {
      throw Error(e.what());
    }
  }
  std::string path(value.substr(guestabi::kRunParamDiskPrefix.size()));
  std::string bytes;
  try {
    // The first 4 KiB, then the rest of the JSON only when the header says there is more: a
    // snapshot's overrides disk always has the largest size (16 MiB), and every page a restored
    // guest reads it into is a page of its own instead of one shared with the snapshot's file.
    bytes = read_device(path, kFirstOverridesRead);
    if (const std::size_t need = guestabi::overrides_disk_extent(bytes); need > bytes.size())
      bytes = read_device(path, need);
  } catch (const Error& e) {
    throw Error(std::string("run overrides: ") + e.what());
  }
  try {
    return guestabi::decode_overrides_disk(bytes);
  } catch (const guestabi::Error& e) {
    throw Error("run overrides from " + path + ": " + e.what());
  }
}

guestabi::RunOverrides run_overrides_from_cmdline(std::string_view cmdline, bool snapshot) {
  auto value = guestabi::kernel_param(cmdline, guestabi::kRunParam);
  if (value) return decode_run_param(*value, snapshot);
  if (snapshot)
    throw Error("run overrides: " + snapshot_mode_text() + " without " +
                guestabi::run_overrides_disk_param("/dev/vdX") +
                ": every restore needs overrides of its own (entropy, clock)");
  return {};
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
