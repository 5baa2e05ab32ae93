#include "img2vm/guestabi/config.hpp"

#include <arpa/inet.h>
#include <sys/resource.h>
#include <sys/socket.h>

#include <algorithm>
#include <array>
#include <nlohmann/json.hpp>

#include "img2vm/guestabi/error.hpp"
#include "json_object.hpp"

namespace img2vm::guestabi {

using nlohmann::json;

namespace {

[[noreturn]] void bad(std::string_view what, std::string_view field, std::string_view why) {
  throw Error(std::string(what) + ": field \"" + std::string(field) + "\" " + std::string(why));
}

std::vector<std::string> string_list(const json& obj, std::string_view what, const char* field) {
  std::vector<std::string> out;
  auto it = obj.find(field);
  if (it == obj.end() || it->is_null()) return out;
  if (!it->is_array()) bad(what, field, "must be an array of strings");
  for (const auto& v : *it) {
    if (!v.is_string()) bad(what, field, "must be an array of strings");
    out.push_back(v.get<std::string>());
  }
  return out;
}

std::string string_field(const json& obj, std::string_view what, const char* field) {
  auto it = obj.find(field);
  if (it == obj.end() || it->is_null()) return {};
  if (!it->is_string()) bad(what, field, "must be a string");
  return it->get<std::string>();
}

std::optional<std::vector<std::string>> optional_string_list(const json& obj, std::string_view what,
                                                             const char* field) {
  auto it = obj.find(field);
  if (it == obj.end() || it->is_null()) return std::nullopt;
  return string_list(obj, what, field);
}

std::optional<std::string> optional_string(const json& obj, std::string_view what,
                                           const char* field) {
  auto it = obj.find(field);
  if (it == obj.end() || it->is_null()) return std::nullopt;
  return string_field(obj, what, field);
}

bool bool_field(const json& obj, std::string_view what, const char* field) {
  auto it = obj.find(field);
  if (it == obj.end() || it->is_null()) return false;
  if (!it->is_boolean()) bad(what, field, "must be true or false");
  return it->get<bool>();
}

std::map<std::string, std::string> string_map(const json& obj, std::string_view what,
                                              const char* field) {
  std::map<std::string, std::string> out;
  auto it = obj.find(field);
  if (it == obj.end() || it->is_null()) return out;
  if (!it->is_object()) bad(what, field, "must be an object of strings");
  for (auto kv = it->begin(); kv != it->end(); ++kv) {
    if (!kv.value().is_string()) bad(what, field, "must be an object of strings");
    out.emplace(kv.key(), kv.value().get<std::string>());
  }
  return out;
}

// nlohmann refuses to write a string that is not UTF-8 (JSON text must be).
std::string dump(const json& j, std::string_view what, int indent) {
  try {
    return j.dump(indent);
  } catch (const json::exception&) {
    throw Error(std::string(what) + ": a string is not valid UTF-8");
  }
}

}  // namespace

bool valid_fs_tag(std::string_view tag) {
  if (tag.empty() || tag.size() > kMaxFsTag) return false;
  for (char c : tag)
    if (static_cast<unsigned char>(c) <= 0x20 || c == 0x7f || c == ',' || c == '"') return false;
  return true;
}

RuntimeConfig runtime_config_from_image_config(std::string_view text) {
  constexpr std::string_view what = "image configuration";
  json root = detail::parse_json_object(text, what);
  RuntimeConfig c;
  auto it = root.find("config");
  if (it == root.end() || it->is_null()) return c;
  if (!it->is_object()) bad(what, "config", "must be an object");
  const json& cfg = *it;
  c.entrypoint = string_list(cfg, what, "Entrypoint");
  c.cmd = string_list(cfg, what, "Cmd");
  c.env = string_list(cfg, what, "Env");
  c.working_dir = string_field(cfg, what, "WorkingDir");
  c.user = string_field(cfg, what, "User");
  c.stop_signal = string_field(cfg, what, "StopSignal");
  c.labels = string_map(cfg, what, "Labels");
  return c;
}

namespace {

json config_object(const RuntimeConfig& c) {
  return {
      {"entrypoint", c.entrypoint},   {"cmd", c.cmd},       {"env", c.env},
      {"working_dir", c.working_dir}, {"user", c.user},     {"stop_signal", c.stop_signal},
      {"hostname", c.hostname},       {"labels", c.labels},
  };
}

RuntimeConfig config_fields(const json& j, std::string_view what) {
  RuntimeConfig c;
  c.entrypoint = string_list(j, what, "entrypoint");
  c.cmd = string_list(j, what, "cmd");
  c.env = string_list(j, what, "env");
  c.working_dir = string_field(j, what, "working_dir");
  c.user = string_field(j, what, "user");
  c.stop_signal = string_field(j, what, "stop_signal");
  c.hostname = string_field(j, what, "hostname");
  c.labels = string_map(j, what, "labels");
  return c;
}

}  // namespace

std::optional<std::array<uint8_t, 6>> parse_unicast_mac(std::string_view text) {
  if (text.size() != 17) return std::nullopt;
  auto digit = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  std::array<uint8_t, 6> mac{};
  for (size_t i = 0; i < 6; ++i) {
    int hi = digit(text[3 * i]), lo = digit(text[3 * i + 1]);
    if (hi < 0 || lo < 0 || (i < 5 && text[3 * i + 2] != ':')) return std::nullopt;
    mac[i] = uint8_t(hi << 4 | lo);
  }
  if (mac[0] & 1) return std::nullopt;
  return mac;
}

std::string format_mac(const std::array<uint8_t, 6>& mac) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string s;
  for (uint8_t b : mac) {
    if (!s.empty()) s += ':';
    s += kHex[b >> 4];
    s += kHex[b & 15];
  }
  return s;
}

std::string to_json(const RuntimeConfig& c) {
  json j = config_object(c);
  j["schema"] = kSchemaVersion;
  return dump(j, "img2vm runtime config", 2) + "\n";
}

namespace {

void check_schema(const json& j, std::string_view what) {
  auto schema = j.find("schema");
  if (schema == j.end() || !schema->is_number_integer()) bad(what, "schema", "is missing");
  if (schema->get<int>() != kSchemaVersion)
    bad(what, "schema",
        "is version " + std::to_string(schema->get<int>()) + ", this build reads version " +
            std::to_string(kSchemaVersion));
}

}  // namespace

RuntimeConfig runtime_config_from_json(std::string_view text) {
  constexpr std::string_view what = "img2vm runtime config";
  json j = detail::parse_json_object(text, what);
  check_schema(j, what);
  return config_fields(j, what);
}

namespace {

// An absolute path with no empty, "." or ".." component, no trailing slash, no NUL, and not "/".
bool normal_guest_path(const std::string& p) {
  if (p.size() < 2 || p.size() > 4096 || p[0] != '/' || p.back() == '/' ||
      p.find('\0') != std::string::npos)
    return false;
  for (std::size_t i = 1; i <= p.size();) {
    std::size_t e = p.find('/', i);
    if (e == std::string::npos) e = p.size();
    std::string_view c(p.data() + i, e - i);
    if (c.empty() || c == "." || c == "..") return false;
    i = e + 1;
  }
  return true;
}

std::vector<MountSpec> mounts_field(const json& j, std::string_view what) {
  std::vector<MountSpec> out;
  auto it = j.find("mounts");
  if (it == j.end() || it->is_null()) return out;
  if (!it->is_array()) bad(what, "mounts", "must be an array");
  if (it->size() > kMaxMounts)
    bad(what, "mounts",
        "has " + std::to_string(it->size()) + " entries, more than " + std::to_string(kMaxMounts));
  std::size_t file_bytes = 0;
  for (const json& e : *it) {
    if (!e.is_object()) bad(what, "mounts", "holds an entry that is not an object");
    for (const auto& [k, v] : e.items())
      if (k != "type" && k != "tag" && k != "target" && k != "readonly" && k != "size" &&
          k != "mode" && k != "uid" && k != "gid" && k != "content")
        bad(what, "mounts", "has an entry with an unknown field \"" + k + "\"");
    MountSpec m;
    std::string type = string_field(e, what, "type");
    if (type == "tmpfs")
      m.type = MountSpec::Type::kTmpfs;
    else if (type == "file")
      m.type = MountSpec::Type::kFile;
    else if (type != "virtiofs")
      bad(what, "mounts.type", "has \"" + type + "\", not virtiofs, tmpfs or file");
    m.target = string_field(e, what, "target");
    if (!normal_guest_path(m.target))
      bad(what, "mounts.target",
          "has \"" + m.target + "\", not an absolute normalised path other than /");
    for (const auto& other : out)
      if (other.target == m.target) bad(what, "mounts.target", "has " + m.target + " twice");
    m.tag = optional_string(e, what, "tag").value_or("");
    if (m.type == MountSpec::Type::kVirtiofs) {
      if (!valid_fs_tag(m.tag))
        bad(what, "mounts.tag",
            "must be 1 to " + std::to_string(kMaxFsTag) +
                " bytes without blanks, control characters, commas or quotes");
    } else if (!m.tag.empty()) {
      bad(what, "mounts.tag", "is given for a tmpfs or file");
    }
    m.readonly = bool_field(e, what, "readonly");
    auto number = [&](const char* field, uint64_t hi, uint64_t absent) -> uint64_t {
      auto f = e.find(field);
      if (f == e.end() || f->is_null()) return absent;
      if (!f->is_number_unsigned() || f->get<uint64_t>() > hi)
        bad(what, (std::string("mounts.") + field).c_str(),
            "must be a whole number up to " + std::to_string(hi));
      return f->get<uint64_t>();
    };
    const bool file = m.type == MountSpec::Type::kFile;
    m.size = number("size", uint64_t(1) << 50, 0);
    m.mode = static_cast<uint32_t>(number("mode", 07777, file ? 0644 : 0));
    m.uid = static_cast<uint32_t>(number("uid", UINT32_MAX, 0));
    m.gid = static_cast<uint32_t>(number("gid", UINT32_MAX, 0));
    if (m.type == MountSpec::Type::kVirtiofs && (m.size || m.mode))
      bad(what, "mounts", "gives a size or mode for a virtiofs mount");
    if (file && m.size) bad(what, "mounts", "gives a size for a file");
    if (!file && (e.contains("uid") || e.contains("gid") || e.contains("content")))
      bad(what, "mounts", "gives a uid, gid or content for a mount that is not a file");
    if (file) {
      // The length is checked before anything is decoded: the text is untrusted.
      const std::string text = string_field(e, what, "content");
      if (text.size() > (kMaxFileMountBytes + 2) / 3 * 4)
        bad(what, "mounts.content",
            "of " + m.target + " is larger than " + std::to_string(kMaxFileMountBytes) + " bytes");
      try {
        m.content = base64url_decode(text);
      } catch (const Error& err) {
        bad(what, "mounts.content", "of " + m.target + ": " + err.what());
      }
      if (m.content.size() > kMaxFileMountBytes)
        bad(what, "mounts.content",
            "of " + m.target + " is larger than " + std::to_string(kMaxFileMountBytes) + " bytes");
      file_bytes += m.content.size();
      if (file_bytes > kMaxFileMountsBytes)
        bad(what, "mounts.content",
            "of the files is larger than " + std::to_string(kMaxFileMountsBytes) + " bytes in all");
    }
    out.push_back(std::move(m));
  }
  return out;
}

// The bounds decoding enforces on file mounts, for the encoder: what it writes must decode.
void check_file_mounts(const std::vector<MountSpec>& mounts, std::string_view what) {
  std::size_t total = 0;
  for (const auto& m : mounts) {
    if (m.type != MountSpec::Type::kFile) continue;
    if (m.content.size() > kMaxFileMountBytes)
      throw Error(std::string(what) + ": the file mount " + m.target + " holds " +
                  std::to_string(m.content.size()) + " bytes, more than " +
                  std::to_string(kMaxFileMountBytes));
    total += m.content.size();
    if (total > kMaxFileMountsBytes)
      throw Error(std::string(what) + ": the file mounts hold more than " +
                  std::to_string(kMaxFileMountsBytes) + " bytes in all");
  }
}

// "groups": at most kMaxExtraGroups gids.
std::vector<uint32_t> groups_field(const json& j, std::string_view what) {
  std::vector<uint32_t> out;
  auto it = j.find("groups");
  if (it == j.end() || it->is_null()) return out;
  if (!it->is_array() || it->size() > kMaxExtraGroups)
    bad(what, "groups", "must be an array of at most " + std::to_string(kMaxExtraGroups) + " gids");
  for (const auto& g : *it) {
    if (!g.is_number_unsigned() || g.get<uint64_t>() > UINT32_MAX)
      bad(what, "groups", "must hold gids from 0 to 4294967295");
    out.push_back(g.get<uint32_t>());
  }
  return out;
}

// "rlimits": at most kMaxRlimits {"type", "soft", "hard"}, known types, soft <= hard.
std::vector<Rlimit> rlimits_field(const json& j, std::string_view what) {
  std::vector<Rlimit> out;
  auto it = j.find("rlimits");
  if (it == j.end() || it->is_null()) return out;
  if (!it->is_array() || it->size() > kMaxRlimits)
    bad(what, "rlimits", "must be an array of at most " + std::to_string(kMaxRlimits) + " limits");
  for (const auto& e : *it) {
    if (!e.is_object()) bad(what, "rlimits", "must hold objects");
    Rlimit r;
    r.type = string_field(e, what, "type");
    if (!rlimit_resource(r.type))
      bad(what, "rlimits.type", "has \"" + r.type + "\", not a limit Linux has");
    for (auto [field, v] : {std::pair{"soft", &r.soft}, std::pair{"hard", &r.hard}}) {
      auto f = e.find(field);
      if (f == e.end() || !f->is_number_unsigned())
        bad(what, (std::string("rlimits.") + field).c_str(), "must be a whole number");
      *v = f->get<uint64_t>();
    }
    if (r.soft > r.hard) bad(what, "rlimits", r.type + ": soft is above hard");
    for (const auto& other : out)
      if (other.type == r.type) bad(what, "rlimits", "has " + r.type + " twice");
    out.push_back(std::move(r));
  }
  return out;
}

// The family of an address in text (AF_INET: a dotted quad, AF_INET6), its bytes in `bytes`;
// 0 for anything else.
int address_family(const std::string& text, std::array<uint8_t, 16>& bytes) {
  if (::inet_pton(AF_INET, text.c_str(), bytes.data()) == 1) return AF_INET;
  if (::inet_pton(AF_INET6, text.c_str(), bytes.data()) == 1) return AF_INET6;
  return 0;
}

// An address a host can have (or route through): not unspecified, not multicast.
bool unicast(int family, const std::array<uint8_t, 16>& b) {
  if (family == AF_INET6)
    return b[0] != 0xff && std::any_of(b.begin(), b.end(), [](uint8_t x) { return x != 0; });
  return (b[0] & 0xf0) != 0xe0 && (b[0] | b[1] | b[2] | b[3]) != 0;
}

// net's addresses6 and routes, checked alike when they are written and when they are read:
// bounds, families, prefix lengths, no host bits in a destination, unicast addresses.
void check_net_lists(const NetConfig& n, std::string_view what) {
  if (n.addresses6.size() > kMaxNetAddresses6)
    bad(what, "net.addresses6", "has more than " + std::to_string(kMaxNetAddresses6));
  std::array<uint8_t, 16> b{};
  for (const NetAddress6& a : n.addresses6) {
    if (address_family(a.address, b) != AF_INET6 || !unicast(AF_INET6, b))
      bad(what, "net.addresses6", "has \"" + a.address + "\", not a unicast IPv6 address");
    if (a.prefix > 128) bad(what, "net.addresses6", a.address + ": prefix over 128");
  }
  if (n.routes.size() > kMaxNetRoutes)
    bad(what, "net.routes", "has more than " + std::to_string(kMaxNetRoutes));
  for (const NetRoute& r : n.routes) {
    const int family = address_family(r.destination, b);
    if (!family) bad(what, "net.routes", "has \"" + r.destination + "\", not an IP address");
    const unsigned bits = family == AF_INET ? 32 : 128;
    if (r.prefix > bits)
      bad(what, "net.routes", r.destination + ": prefix over " + std::to_string(bits));
    for (unsigned i = r.prefix; i < bits; ++i)
      if (b[i / 8] & (0x80 >> (i % 8)))
        bad(what, "net.routes",
            r.destination + "/" + std::to_string(r.prefix) + " has host bits set");
    if (r.gateway.empty()) continue;
    if (address_family(r.gateway, b) != family || !unicast(family, b))
      bad(what, "net.routes",
          r.destination + ": gateway \"" + r.gateway + "\" is not a unicast address of its family");
  }
}

json net_lists_json(const NetConfig& n, json j) {
  if (!n.addresses6.empty()) {
    json as = json::array();
    for (const NetAddress6& a : n.addresses6)
      as.push_back({{"address", a.address}, {"prefix", a.prefix}});
    j["addresses6"] = std::move(as);
  }
  if (!n.routes.empty()) {
    json rs = json::array();
    for (const NetRoute& r : n.routes) {
      json e = {{"destination", r.destination}, {"prefix", r.prefix}};
      if (!r.gateway.empty()) e["gateway"] = r.gateway;
      rs.push_back(std::move(e));
    }
    j["routes"] = std::move(rs);
  }
  return j;
}

// A whole number field of `obj`, from 0 to `hi`; `dflt` when absent.
unsigned small_number(const json& obj, std::string_view what, const char* field, unsigned dflt,
                      unsigned hi) {
  auto f = obj.find(field);
  if (f == obj.end() || f->is_null()) return dflt;
  if (!f->is_number_unsigned() || f->get<uint64_t>() > hi)
    bad(what, field, "must be a whole number from 0 to " + std::to_string(hi));
  return unsigned(f->get<uint64_t>());
}

void read_net_lists(const json& n, std::string_view what, NetConfig& c) {
  std::string w = std::string(what) + ": net.addresses6";
  if (auto it = n.find("addresses6"); it != n.end() && !it->is_null()) {
    if (!it->is_array() || it->size() > kMaxNetAddresses6)
      bad(what, "net.addresses6",
          "must be an array of at most " + std::to_string(kMaxNetAddresses6) + " addresses");
    for (const json& e : *it) {
      if (!e.is_object()) bad(what, "net.addresses6", "must hold objects");
      c.addresses6.push_back(
          {string_field(e, w, "address"), small_number(e, w, "prefix", 64, 128)});
    }
  }
  w = std::string(what) + ": net.routes";
  if (auto it = n.find("routes"); it != n.end() && !it->is_null()) {
    if (!it->is_array() || it->size() > kMaxNetRoutes)
      bad(what, "net.routes",
          "must be an array of at most " + std::to_string(kMaxNetRoutes) + " routes");
    for (const json& e : *it) {
      if (!e.is_object()) bad(what, "net.routes", "must hold objects");
      c.routes.push_back({string_field(e, w, "destination"), small_number(e, w, "prefix", 0, 128),
                          string_field(e, w, "gateway")});
    }
  }
  check_net_lists(c, what);
}

// "entropy": base64url of kMinEntropyBytes to kMaxEntropyBytes; absent: none. The text's length
// is checked before it is decoded (untrusted input).
std::string entropy_field(const json& j, std::string_view what) {
  if (auto it = j.find("entropy"); it == j.end() || it->is_null()) return {};
  const std::string text = string_field(j, what, "entropy");
  const std::string bounds = "must be base64url of " + std::to_string(kMinEntropyBytes) + " to " +
                             std::to_string(kMaxEntropyBytes) + " bytes";
  if (text.size() > (kMaxEntropyBytes + 2) / 3 * 4) bad(what, "entropy", bounds);
  std::string bytes;
  try {
    bytes = base64url_decode(text);
  } catch (const Error& err) {
    bad(what, "entropy", bounds + " (" + err.what() + ")");
  }
  if (bytes.size() < kMinEntropyBytes || bytes.size() > kMaxEntropyBytes)
    bad(what, "entropy", bounds + ", not " + std::to_string(bytes.size()));
  return bytes;
}

const std::string& realtime_bounds() {
  static const std::string text = "must be a whole number of nanoseconds from " +
                                  std::to_string(kMinRealtimeNs) + " (2000-01-01) to " +
                                  std::to_string(kMaxRealtimeNs) + " (2200-01-01)";
  return text;
}

// "realtime_ns": a whole number within kMinRealtimeNs..kMaxRealtimeNs; absent: nullopt.
std::optional<int64_t> realtime_field(const json& j, std::string_view what) {
  auto it = j.find("realtime_ns");
  if (it == j.end() || it->is_null()) return std::nullopt;
  // Checked as unsigned first: a number above INT64_MAX would wrap as int64_t.
  if (!it->is_number_unsigned() || it->get<uint64_t>() < uint64_t(kMinRealtimeNs) ||
      it->get<uint64_t>() > uint64_t(kMaxRealtimeNs))
    bad(what, "realtime_ns", realtime_bounds());
  return it->get<int64_t>();
}

// The bounds decoding enforces on entropy and realtime_ns, for the encoder.
void check_fresh_fields(const RunOverrides& o, std::string_view what) {
  if (!o.entropy.empty() &&
      (o.entropy.size() < kMinEntropyBytes || o.entropy.size() > kMaxEntropyBytes))
    throw Error(std::string(what) + ": entropy of " + std::to_string(o.entropy.size()) +
                " bytes, not " + std::to_string(kMinEntropyBytes) + " to " +
                std::to_string(kMaxEntropyBytes));
  if (o.realtime_ns && (*o.realtime_ns < kMinRealtimeNs || *o.realtime_ns > kMaxRealtimeNs))
    throw Error(std::string(what) + ": realtime_ns " + std::to_string(*o.realtime_ns) + " " +
                realtime_bounds());
}

}  // namespace

std::optional<int> rlimit_resource(std::string_view type) {
  static constexpr std::pair<std::string_view, int> kTypes[] = {
      {"RLIMIT_AS", RLIMIT_AS},
      {"RLIMIT_CORE", RLIMIT_CORE},
      {"RLIMIT_CPU", RLIMIT_CPU},
      {"RLIMIT_DATA", RLIMIT_DATA},
      {"RLIMIT_FSIZE", RLIMIT_FSIZE},
      {"RLIMIT_LOCKS", RLIMIT_LOCKS},
      {"RLIMIT_MEMLOCK", RLIMIT_MEMLOCK},
      {"RLIMIT_MSGQUEUE", RLIMIT_MSGQUEUE},
      {"RLIMIT_NICE", RLIMIT_NICE},
      {"RLIMIT_NOFILE", RLIMIT_NOFILE},
      {"RLIMIT_NPROC", RLIMIT_NPROC},
      {"RLIMIT_RSS", RLIMIT_RSS},
      {"RLIMIT_RTPRIO", RLIMIT_RTPRIO},
      {"RLIMIT_RTTIME", RLIMIT_RTTIME},
      {"RLIMIT_SIGPENDING", RLIMIT_SIGPENDING},
      {"RLIMIT_STACK", RLIMIT_STACK}};
  for (const auto& [name, r] : kTypes)
    if (name == type) return r;
  return std::nullopt;
}

std::string to_json(const RunOverrides& o) {
  json j = {{"schema", kSchemaVersion}};
  if (o.entrypoint) j["entrypoint"] = *o.entrypoint;
  if (o.cmd) j["cmd"] = *o.cmd;
  if (!o.env.empty()) j["env"] = o.env;
  if (o.working_dir) j["working_dir"] = *o.working_dir;
  if (o.user) j["user"] = *o.user;
  if (o.hostname) j["hostname"] = *o.hostname;
  if (!o.dns.empty()) j["dns"] = o.dns;
  if (o.tty) j["tty"] = true;
  if (o.interactive) j["interactive"] = true;
  if (o.agent_signals) j["agent_signals"] = true;
  if (o.wait_for_start) j["wait_for_start"] = true;
  if (!o.extra_groups.empty()) j["groups"] = o.extra_groups;
  if (!o.rlimits.empty()) {
    json rs = json::array();
    for (const auto& r : o.rlimits)
      rs.push_back({{"type", r.type}, {"soft", r.soft}, {"hard", r.hard}});
    j["rlimits"] = std::move(rs);
  }
  if (o.no_new_privileges) j["no_new_privileges"] = true;
  if (o.net) {
    json n = {
        {"interface", o.net->interface}, {"address", o.net->address}, {"prefix", o.net->prefix}};
    if (!o.net->gateway.empty()) n["gateway"] = o.net->gateway;
    if (o.net->mtu) n["mtu"] = o.net->mtu;
    if (!o.net->mac.empty()) n["mac"] = o.net->mac;
    check_net_lists(*o.net, "img2vm run overrides");
    j["net"] = net_lists_json(*o.net, std::move(n));
  }
  if (!o.mounts.empty()) {
    json ms = json::array();
    check_file_mounts(o.mounts, "img2vm run overrides");
    for (const auto& m : o.mounts) {
      const bool file = m.type == MountSpec::Type::kFile;
      json e = {{"type", file                                ? "file"
                         : m.type == MountSpec::Type::kTmpfs ? "tmpfs"
                                                             : "virtiofs"},
                {"target", m.target}};
      if (!m.tag.empty()) e["tag"] = m.tag;
      if (m.readonly) e["readonly"] = true;
      if (m.size) e["size"] = m.size;
      if (m.mode || file) e["mode"] = m.mode;
      if (m.uid) e["uid"] = m.uid;
      if (m.gid) e["gid"] = m.gid;
      if (file) e["content"] = base64url_encode(m.content);
      ms.push_back(std::move(e));
    }
    j["mounts"] = std::move(ms);
  }
  if (o.image) j["image"] = config_object(*o.image);
  check_fresh_fields(o, "img2vm run overrides");
  if (!o.entropy.empty()) j["entropy"] = base64url_encode(o.entropy);
  if (o.realtime_ns) j["realtime_ns"] = *o.realtime_ns;
  return dump(j, "img2vm run overrides", -1);
}

RunOverrides run_overrides_from_json(std::string_view text) {
  constexpr std::string_view what = "img2vm run overrides";
  json j = detail::parse_json_object(text, what);
  check_schema(j, what);
  RunOverrides o;
  o.entrypoint = optional_string_list(j, what, "entrypoint");
  o.cmd = optional_string_list(j, what, "cmd");
  o.env = string_list(j, what, "env");
  for (const auto& e : o.env) {
    auto eq = e.find('=');
    if (eq == std::string::npos || eq == 0) bad(what, "env", "has \"" + e + "\", not KEY=VALUE");
  }
  o.working_dir = optional_string(j, what, "working_dir");
  o.user = optional_string(j, what, "user");
  o.hostname = optional_string(j, what, "hostname");
  o.dns = string_list(j, what, "dns");
  o.tty = bool_field(j, what, "tty");
  o.interactive = bool_field(j, what, "interactive");
  o.agent_signals = bool_field(j, what, "agent_signals");
  o.wait_for_start = bool_field(j, what, "wait_for_start");
  o.extra_groups = groups_field(j, what);
  o.rlimits = rlimits_field(j, what);
  o.no_new_privileges = bool_field(j, what, "no_new_privileges");
  if (auto it = j.find("net"); it != j.end() && !it->is_null()) {
    if (!it->is_object()) bad(what, "net", "must be an object");
    const json& n = *it;
    auto ipv4 = [&](const char* field, bool required) {
      std::string v = string_field(n, what, field);
      in_addr a{};
      if (v.empty() && !required) return v;
      if (::inet_pton(AF_INET, v.c_str(), &a) != 1)
        bad(what, (std::string("net.") + field).c_str(), "has \"" + v + "\", not an IPv4 address");
      return v;
    };
    auto number = [&](const char* field, unsigned dflt, unsigned lo, unsigned hi) {
      auto f = n.find(field);
      if (f == n.end() || f->is_null()) return dflt;
      if (!f->is_number_unsigned() || f->get<uint64_t>() < lo || f->get<uint64_t>() > hi)
        bad(what, (std::string("net.") + field).c_str(),
            "must be a whole number from " + std::to_string(lo) + " to " + std::to_string(hi));
      return unsigned(f->get<uint64_t>());
    };
    NetConfig c;
    c.interface = optional_string(n, what, "interface").value_or("eth0");
    if (c.interface.empty() || c.interface.size() > 15 ||
        c.interface.find('/') != std::string::npos)
      bad(what, "net.interface", "has \"" + c.interface + "\", not an interface name");
    c.address = ipv4("address", true);
    c.prefix = number("prefix", 24, 0, 32);
    c.gateway = ipv4("gateway", false);
    c.mtu = number("mtu", 0, 68, 65535);
    c.mac = string_field(n, what, "mac");
    if (!c.mac.empty() && !parse_unicast_mac(c.mac))
      bad(what, "net.mac", "has \"" + c.mac + "\", not a unicast MAC address");
    read_net_lists(n, what, c);
    o.net = c;
  }
  o.mounts = mounts_field(j, what);
  if (auto it = j.find("image"); it != j.end() && !it->is_null()) {
    if (!it->is_object()) bad(what, "image", "must be an object");
    o.image = config_fields(*it, std::string(what) + ": image");
  }
  o.entropy = entropy_field(j, what);
  o.realtime_ns = realtime_field(j, what);
  return o;
}

std::optional<OciBundleConfig> oci_bundle_config(std::string_view text) {
  constexpr std::string_view what = "OCI runtime config";
  if (text.size() > kMaxOciConfigJson)
    throw Error(std::string(what) + ": larger than " + std::to_string(kMaxOciConfigJson) +
                " bytes");
  json j = text.find('\0') == std::string_view::npos
               ? json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false)
               : json(json::value_t::discarded);
  if (!j.is_object()) return std::nullopt;
  auto version = j.find("ociVersion");
  if (version == j.end() || !version->is_string()) return std::nullopt;
  auto object = [&](const json& parent, const char* field, const char* name) -> const json* {
    auto it = parent.find(field);
    if (it == parent.end() || it->is_null()) return nullptr;
    if (!it->is_object()) bad(what, name, "must be an object");
    return &*it;
  };
  OciBundleConfig b;
  if (const json* root = object(j, "root", "root")) b.root_path = string_field(*root, what, "path");
  b.config.hostname = string_field(j, what, "hostname");
  if (const json* process = object(j, "process", "process")) {
    b.config.cmd = string_list(*process, what, "args");
    b.config.env = string_list(*process, what, "env");
    for (const auto& e : b.config.env) {
      auto eq = e.find('=');
      if (eq == std::string::npos || eq == 0)
        bad(what, "process.env", "has \"" + e + "\", not KEY=VALUE");
    }
    b.config.working_dir = string_field(*process, what, "cwd");
    if (!b.config.working_dir.empty() && b.config.working_dir[0] != '/')
      bad(what, "process.cwd", "must be an absolute path");
    if (const json* user = object(*process, "user", "process.user")) {
      auto id = [&](const char* field) -> std::string {
        auto f = user->find(field);
        if (f == user->end() || f->is_null()) return "0";
        if (!f->is_number_unsigned() || f->get<uint64_t>() > 0xfffffffeu)
          bad(what, (std::string("process.user.") + field).c_str(),
              "must be a whole number up to 4294967294");
        return std::to_string(f->get<uint64_t>());
      };
      b.config.user = id("uid") + ":" + id("gid");
    }
  }
  return b;
}

namespace {
constexpr char kB64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
}

std::string base64url_encode(std::string_view bytes) {
  std::string out;
  out.reserve((bytes.size() + 2) / 3 * 4);
  std::size_t i = 0;
  for (; i + 3 <= bytes.size(); i += 3) {
    unsigned v = (static_cast<unsigned char>(bytes[i]) << 16) |
                 (static_cast<unsigned char>(bytes[i + 1]) << 8) |
                 static_cast<unsigned char>(bytes[i + 2]);
    out += kB64[(v >> 18) & 63];
    out += kB64[(v >> 12) & 63];
    out += kB64[(v >> 6) & 63];
    out += kB64[v & 63];
  }
  std::size_t rest = bytes.size() - i;
  if (rest > 0) {
    unsigned v = static_cast<unsigned char>(bytes[i]) << 16;
    if (rest == 2) v |= static_cast<unsigned char>(bytes[i + 1]) << 8;
    out += kB64[(v >> 18) & 63];
    out += kB64[(v >> 12) & 63];
    if (rest == 2) out += kB64[(v >> 6) & 63];
  }
  return out;
}

std::string base64url_decode(std::string_view text) {
  while (!text.empty() && text.back() == '=') text.remove_suffix(1);
  auto value = [](char c) -> int {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '-') return 62;
    if (c == '_') return 63;
    return -1;
  };
  if (text.size() % 4 == 1) throw Error("base64url: truncated input");
  std::string out;
  out.reserve(text.size() / 4 * 3 + 2);
  unsigned acc = 0;
  int bits = 0;
  for (char c : text) {
    int v = value(c);
    if (v < 0) throw Error("base64url: invalid character");
    acc = (acc << 6) | static_cast<unsigned>(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out += static_cast<char>((acc >> bits) & 0xff);
    }
  }
  if ((acc & ((1u << bits) - 1)) != 0) throw Error("base64url: non-canonical trailing bits");
  return out;
}

namespace detail {

json parse_json_object(std::string_view text, std::string_view what) {
  // nlohmann stops at a NUL byte and would ignore whatever follows it.
  json j = text.find('\0') == std::string_view::npos
               ? json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false)
               : json(json::value_t::discarded);
  if (j.is_discarded()) throw Error(std::string(what) + ": not valid JSON");
  if (!j.is_object()) throw Error(std::string(what) + ": not a JSON object");
  return j;
}

}  // namespace detail

}  // namespace img2vm::guestabi
