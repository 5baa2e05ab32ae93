#include "img2vm/runtime/mounts.hpp"

#include <algorithm>
#include <set>

#include "img2vm/base/ascii.hpp"
#include "img2vm/base/error.hpp"
#include "img2vm/guestabi/config.hpp"
#include "img2vm/runtime/volumes.hpp"

namespace img2vm::runtime {

namespace fs = std::filesystem;

namespace {

constexpr uint64_t kMaxTmpfsSize = uint64_t(1) << 50;  // guestabi's bound

[[noreturn]] void bad(const std::string& what, const std::string& why) {
  throw Error(ErrorKind::kInvalidArgument, what + ": " + why);
}

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> out;
  size_t start = 0;
  for (size_t i = 0; i <= s.size(); ++i)
    if (i == s.size() || s[i] == sep) {
      out.push_back(s.substr(start, i - start));
      start = i + 1;
    }
  return out;
}

// An absolute path without ".", "..", repeated or trailing slashes (filepath.Clean, as docker).
std::string clean(const std::string& p) {
  std::string n = fs::path(p).lexically_normal().string();
  while (n.size() > 1 && n.back() == '/') n.pop_back();
  return n;
}

std::string guest_path(const std::string& what, const std::string& p) {
  if (p.empty() || p[0] != '/')
    bad(what, "invalid mount path: '" + p + "' mount path must be absolute");
  if (p.size() > 4096) bad(what, "the guest path is longer than 4096 bytes");
  std::string n = clean(p);
  if (n == "/") bad(what, "invalid specification: destination can't be '/'");
  return n;
}

// "65536", "64k", "64m", "1g", "1gb" (docker's RAMInBytes): bytes, at least 1.
uint64_t parse_bytes(const std::string& what, const std::string& text) {
  std::string t = ascii_lower(text);
  if (!t.empty() && t.back() == 'b') t.pop_back();
  uint64_t unit = 1;
  if (!t.empty()) {
    const std::string units = "kmgt";
    if (auto u = units.find(t.back()); u != std::string::npos) {
      unit = uint64_t(1) << (10 * (u + 1));
      t.pop_back();
    }
  }
  if (t.empty() || t.size() > 16 || t.find_first_not_of("0123456789") != std::string::npos)
    bad(what, "invalid size: '" + text + "'");
  const uint64_t n = std::stoull(t);
  if (n == 0 || n > kMaxTmpfsSize / unit) bad(what, "size '" + text + "' is not in 1 byte-1 PiB");
  return n * unit;
}

uint32_t parse_mode(const std::string& what, const std::string& text) {
  if (text.empty() || text.size() > 5 || text.find_first_not_of("01234567") != std::string::npos)
    bad(what, "invalid mode: '" + text + "' (octal permission bits, e.g. 1777)");
  const unsigned long m = std::stoul(text, nullptr, 8);
  if (m > 07777) bad(what, "invalid mode: '" + text + "' (octal permission bits, e.g. 1777)");
  return uint32_t(m);
}

// Go's strconv.ParseBool, which docker uses for readonly=.
bool parse_bool(const std::string& what, const std::string& key, const std::string& v) {
  for (const char* t : {"1", "t", "T", "TRUE", "true", "True"})
    if (v == t) return true;
  for (const char* f : {"0", "f", "F", "FALSE", "false", "False"})
    if (v == f) return false;
  bad(what, "invalid value for " + key + ": " + v);
}

// The fields of a --mount value: comma-separated, each possibly in double quotes ("" inside is
// a quote), as docker's CSV reader takes them.
std::vector<std::string> csv_fields(const std::string& what, const std::string& s) {
  std::vector<std::string> out(1);
  bool quoted = false;
  for (size_t i = 0; i < s.size(); ++i) {
    const char c = s[i];
    if (quoted && c == '"' && i + 1 < s.size() && s[i + 1] == '"') {
      out.back() += '"';
      ++i;
    } else if (c == '"' && (quoted || out.back().empty())) {
      quoted = !quoted;
    } else if (c == ',' && !quoted) {
      out.emplace_back();
    } else {
      out.back() += c;
    }
  }
  if (quoted) bad(what, "a quoted field is not closed");
  return out;
}

// HOST of -v HOST:GUEST: a host path, or a volume's name.
void volume_source(const std::string& what, const std::string& host, Mount& m) {
  if (!host.empty() && host[0] == '/') {
    m.source = clean(host);
  } else if (host == "." || host == ".." || host.rfind("./", 0) == 0 || host.rfind("../", 0) == 0) {
    m.source = clean(fs::absolute(host).string());
  } else {
    try {
      check_volume_name(host);
    } catch (const Error& e) {
      throw e.with_context(what);
    }
    m.type = Mount::Type::kVolume;
    m.volume = host;
  }
}

}  // namespace

Mount parse_volume(const std::string& spec) {
  const std::string what = "-v " + spec;
  std::vector<std::string> parts = split(spec, ':');
  if (parts.size() > 3) bad(what, "invalid volume specification (HOST:GUEST[:ro|rw])");
  Mount m;
  if (parts.size() == 1) {  // an anonymous volume
    m.type = Mount::Type::kVolume;
    m.target = guest_path(what, parts[0]);
    return m;
  }
  volume_source(what, parts[0], m);
  m.target = guest_path(what, parts[1]);
  if (parts.size() < 3) return m;
  const bool vol = m.type == Mount::Type::kVolume;
  for (const auto& opt : split(parts[2], ',')) {
    if (opt == "ro" || opt == "rw")
      m.read_only = opt == "ro";
    else if (opt == "nocopy" && vol)
      m.nocopy = true;
    else
      bad(what, "unsupported option '" + opt + (vol ? "' (ro, rw or nocopy)" : "' (ro or rw)"));
  }
  return m;
}

namespace {

struct MountFields {
  std::string type = "volume", source, target, size, mode;
  bool source_set = false, tmpfs_set = false, volume_set = false, read_only = false, nocopy = false;
};

void mount_field(const std::string& what, MountFields& f, const std::string& field) {
  const size_t eq = field.find('=');
  const std::string key = ascii_lower(field.substr(0, eq));
  if (eq == std::string::npos) {
    if (key == "readonly" || key == "ro") {
      f.read_only = true;
      return;
    }
    if (key == "volume-nocopy") {
      f.nocopy = f.volume_set = true;
      return;
    }
    bad(what, "invalid field '" + field + "' must be a key=value pair");
  }
  const std::string value = field.substr(eq + 1);
  if (key == "type") {
    f.type = value;
  } else if (key == "source" || key == "src") {
    f.source = value;
    f.source_set = true;
  } else if (key == "target" || key == "destination" || key == "dst") {
    f.target = value;
  } else if (key == "readonly" || key == "ro") {
    f.read_only = parse_bool(what, key, value);
  } else if (key == "tmpfs-size") {
    f.size = value;
    f.tmpfs_set = true;
  } else if (key == "tmpfs-mode") {
    f.mode = value;
    f.tmpfs_set = true;
  } else if (key == "volume-nocopy") {
    f.nocopy = parse_bool(what, key, value);
    f.volume_set = true;
  } else if (key == "consistency") {
    // docker ignores it on Linux; so do we
  } else if (key.rfind("bind-", 0) == 0 || key.rfind("volume-", 0) == 0) {
    bad(what, "'" + key + "' is not supported");
  } else {
    bad(what, "unexpected key '" + key + "' in '" + field + "'");
  }
}

// --mount type=volume: a named volume (source) or an anonymous one.
Mount volume_mount(const std::string& what, const MountFields& f, Mount m) {
  if (!f.source.empty()) volume_source(what, f.source, m);
  if (!m.source.empty())
    bad(what,
        "invalid mount config for type \"volume\": the source of a volume is a name, not a path");
  m.type = Mount::Type::kVolume;
  m.nocopy = f.nocopy;
  return m;
}

}  // namespace

Mount parse_mount(const std::string& spec) {
  const std::string what = "--mount " + spec;
  MountFields f;
  for (const auto& field : csv_fields(what, spec))
    if (!field.empty()) mount_field(what, f, field);
  Mount m;
  m.read_only = f.read_only;
  if (f.type != "bind" && f.type != "tmpfs" && f.type != "volume")
    bad(what, "mount type '" + f.type + "' is not supported (bind, volume or tmpfs)");
  const std::string cfg = "invalid mount config for type \"" + f.type + "\": ";
  if (f.target.empty()) bad(what, "target is required");
  m.target = guest_path(what, f.target);
  if (f.type != "volume" && f.volume_set)
    bad(what, cfg + "field VolumeOptions must not be specified");
  if (f.type != "tmpfs" && f.tmpfs_set) bad(what, cfg + "field TmpfsOptions must not be specified");
  if (f.type == "tmpfs") {
    m.type = Mount::Type::kTmpfs;
    if (f.source_set) bad(what, cfg + "field Source must not be specified");
    if (!f.size.empty()) m.size = parse_bytes(what, f.size);
    if (!f.mode.empty()) m.mode = parse_mode(what, f.mode);
    return m;
  }
  if (f.type == "volume") return volume_mount(what, f, std::move(m));
  if (f.source.empty()) bad(what, cfg + "field Source must not be empty");
  if (f.source[0] != '/')
    bad(what, cfg + "invalid mount path: '" + f.source + "' mount path must be absolute");
  m.source = clean(f.source);
  return m;
}

Mount parse_tmpfs(const std::string& spec) {
  const std::string what = "--tmpfs " + spec;
  const size_t colon = spec.find(':');
  Mount m;
  m.type = Mount::Type::kTmpfs;
  m.target = guest_path(what, spec.substr(0, colon));
  if (colon == std::string::npos) return m;
  for (const auto& opt : split(spec.substr(colon + 1), ',')) {
    if (opt == "ro" || opt == "rw")
      m.read_only = opt == "ro";
    else if (opt.rfind("size=", 0) == 0)
      m.size = parse_bytes(what, opt.substr(5));
    else if (opt.rfind("mode=", 0) == 0)
      m.mode = parse_mode(what, opt.substr(5));
    else
      bad(what, "option '" + opt + "' is not supported (size=, mode=, ro, rw)");
  }
  return m;
}

void check_mounts(const std::vector<Mount>& mounts) {
  if (mounts.size() > guestabi::kMaxMounts)
    throw Error(ErrorKind::kInvalidArgument, "too many mounts: " + std::to_string(mounts.size()) +
                                                 ", at most " +
                                                 std::to_string(guestabi::kMaxMounts));
  std::set<std::string> seen;
  for (const auto& m : mounts)
    if (!seen.insert(m.target).second)
      throw Error(ErrorKind::kInvalidArgument, "Duplicate mount point: " + m.target);
}

}  // namespace img2vm::runtime
