#include "img2vm/guestabi/cmdline.hpp"

#include "img2vm/guestabi/error.hpp"
#include "img2vm/guestabi/paths.hpp"

namespace img2vm::guestabi {

namespace {

// The console, the log level, `root` (how the kernel finds the root and the init), the VM ending
// on a panic or a reboot, no timer calibration, then `extra`.
std::string cmdline(bool verbose, std::string_view root, std::string_view extra) {
  std::string c = "console=ttyS0";
  c += verbose ? " loglevel=7" : " quiet";
  (c += ' ') += root;
  c += " reboot=k panic=-1 tsc=reliable no_timer_check";
  if (!extra.empty()) (c += ' ') += extra;
  return c;
}

}  // namespace

std::string image_cmdline(bool verbose, std::string_view extra) {
  return cmdline(verbose, "root=/dev/vda rw init=" + std::string(kInitPath), extra);
}

std::string root_share_param(const RootShare& root) {
  if (!valid_fs_tag(root.tag))
    throw Error("root share: tag \"" + root.tag + "\" is not 1 to " + std::to_string(kMaxFsTag) +
                " bytes without blanks, control characters, commas or quotes");
  return std::string(kRootParam) + "=" + root.tag + (root.read_only ? ",ro" : "");
}

RootShare parse_root_share(std::string_view value) {
  RootShare r;
  std::string_view tag = value;
  if (auto comma = value.find(','); comma != std::string_view::npos) {
    if (value.substr(comma + 1) != "ro")
      throw Error("kernel parameter " + std::string(kRootParam) + ": \"" + std::string(value) +
                  "\" is not TAG or TAG,ro");
    tag = value.substr(0, comma);
    r.read_only = true;
  }
  if (!valid_fs_tag(tag))
    throw Error("kernel parameter " + std::string(kRootParam) + ": \"" + std::string(tag) +
                "\" is not a virtio-fs tag");
  r.tag = std::string(tag);
  return r;
}

std::string directory_cmdline(bool verbose, const RootShare& root, std::string_view extra) {
  return cmdline(verbose, "rdinit=" + std::string(kInitPath) + " " + root_share_param(root), extra);
}

std::string run_overrides_kernel_param(const RunOverrides& o) {
  return std::string(kRunParam) + "=" + base64url_encode(to_json(o));
}

std::string run_overrides_disk_param(std::string_view device) {
  return std::string(kRunParam) + "=" + std::string(kRunParamDiskPrefix) + std::string(device);
}

std::optional<std::string> kernel_param(std::string_view cmdline, std::string_view key) {
  std::optional<std::string> found;
  std::size_t i = 0;
  while (i < cmdline.size()) {
    while (i < cmdline.size() && (cmdline[i] == ' ' || cmdline[i] == '\t' || cmdline[i] == '\n'))
      ++i;
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
    if (word.size() > key.size() && word.compare(0, key.size(), key) == 0 &&
        word[key.size()] == '=')
      found = word.substr(key.size() + 1);
    if (word == "--") break;  // the rest belongs to init's argv, not to parameters
  }
  return found;
}

std::string snapshot_param() { return std::string(kSnapshotParam) + "=1"; }

bool snapshot_requested(std::string_view cmdline) {
  auto value = kernel_param(cmdline, kSnapshotParam);
  if (!value || *value == "0") return false;
  if (*value == "1") return true;
  throw Error("kernel parameter " + std::string(kSnapshotParam) + ": \"" + *value +
              "\" is not 1 or 0");
}

RunOverrides decode_inline_run_param(std::string_view value) {
  const std::string source = "kernel parameter " + std::string(kRunParam);
  std::string json;
  try {
    json = base64url_decode(value);
  } catch (const Error& e) {
    throw Error("run overrides: " + source + ": " + e.what());
  }
  try {
    return run_overrides_from_json(json);
  } catch (const Error& e) {
    throw Error("run overrides from " + source + ": " + e.what());
  }
}

}  // namespace img2vm::guestabi
