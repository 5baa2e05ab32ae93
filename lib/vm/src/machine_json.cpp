#include "img2vm/vm/machine_json.hpp"

#include <cstdio>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>

#include "img2vm/base/error.hpp"

namespace img2vm::vm {

namespace {

using nlohmann::json;

[[noreturn]] void bad(const std::string& where, const std::string& what) {
  throw Error(ErrorKind::kInvalidArgument, "machine config: " + where + ": " + what);
}

// The members of `obj` must all be in `known`.
void only(const json& obj, const std::string& where, std::initializer_list<const char*> known) {
  if (!obj.is_object()) bad(where, "not a JSON object");
  std::set<std::string> k(known.begin(), known.end());
  for (const auto& [key, v] : obj.items())
    if (!k.count(key)) bad(where.empty() ? key : where + "." + key, "unknown member");
}

std::string at(const std::string& where, const char* key) {
  return where.empty() ? key : where + "." + key;
}

template <class T>
T number(const json& obj, const std::string& where, const char* key, T def, T lo, T hi) {
  if (!obj.contains(key)) return def;
  const json& v = obj[key];
  if (!v.is_number_integer()) bad(at(where, key), "not an integer");
  if (v.is_number_unsigned()) {
    auto u = v.get<uint64_t>();
    if (u > uint64_t(std::numeric_limits<int64_t>::max()) || int64_t(u) < int64_t(lo) ||
        int64_t(u) > int64_t(hi))
      bad(at(where, key), "out of range");
    return T(u);
  }
  auto s = v.get<int64_t>();
  if (s < int64_t(lo) || s > int64_t(hi)) bad(at(where, key), "out of range");
  return T(s);
}

bool boolean(const json& obj, const std::string& where, const char* key, bool def) {
  if (!obj.contains(key)) return def;
  if (!obj[key].is_boolean()) bad(at(where, key), "not true or false");
  return obj[key].get<bool>();
}

std::string string(const json& obj, const std::string& where, const char* key,
                   const std::string& def) {
  if (!obj.contains(key)) return def;
  if (!obj[key].is_string()) bad(at(where, key), "not a string");
  return obj[key].get<std::string>();
}

template <class E>
E choice(const json& obj, const std::string& where, const char* key, E def,
         std::initializer_list<std::pair<const char*, E>> names) {
  if (!obj.contains(key)) return def;
  std::string s = string(obj, where, key, "");
  std::string list;
  for (const auto& [n, e] : names) {
    if (s == n) return e;
    list += (list.empty() ? "" : ", ") + std::string(n);
  }
  bad(at(where, key), "\"" + s + "\" is not one of " + list);
}

const std::initializer_list<std::pair<const char*, DiskMode>> kDiskModes = {
    {"read-write", DiskMode::kReadWrite},
    {"read-only", DiskMode::kReadOnly},
    {"copy-on-write", DiskMode::kCopyOnWrite}};
const std::initializer_list<std::pair<const char*, ConsoleInput>> kConsoleInputs = {
    {"immediately", ConsoleInput::kImmediately},
    {"at-workload-exec", ConsoleInput::kAtWorkloadExec}};
const std::initializer_list<std::pair<const char*, SeccompMode>> kSeccompModes = {
    {"kill", SeccompMode::kKill}, {"errno", SeccompMode::kErrno}, {"off", SeccompMode::kOff}};
const std::initializer_list<std::pair<const char*, PortProtocol>> kProtocols = {
    {"tcp", PortProtocol::kTcp}, {"udp", PortProtocol::kUdp}};

template <class E>
const char* name_of(E e, std::initializer_list<std::pair<const char*, E>> names) {
  for (const auto& [n, v] : names)
    if (v == e) return n;
  return "?";
}

std::string mac_string(const std::array<uint8_t, 6>& m) {
  char b[18];
  std::snprintf(b, sizeof b, "%02x:%02x:%02x:%02x:%02x:%02x", m[0], m[1], m[2], m[3], m[4], m[5]);
  return b;
}

std::array<uint8_t, 6> parse_mac(const std::string& s, const std::string& where) {
  std::array<uint8_t, 6> m{};
  unsigned v[6];
  char tail;
  if (s.size() != 17 || std::sscanf(s.c_str(), "%2x:%2x:%2x:%2x:%2x:%2x%c", &v[0], &v[1], &v[2],
                                    &v[3], &v[4], &v[5], &tail) != 6)
    bad(where, "\"" + s + "\" is not a MAC address (xx:xx:xx:xx:xx:xx)");
  for (int i = 0; i < 6; ++i) m[size_t(i)] = uint8_t(v[i]);
  if (m[0] & 1) bad(where, "\"" + s + "\" is a multicast address");
  return m;
}

json forwards_json(const std::vector<PortForward>& forwards) {
  json fw = json::array();
  for (const auto& f : forwards)
    fw.push_back({{"protocol", to_string(f.protocol)},
                  {"host_ip", f.host_ip},
                  {"host_port", f.host_port},
                  {"guest_port", f.guest_port}});
  return fw;
}

std::vector<PortForward> parse_forwards(const json& list, const std::string& where) {
  if (!list.is_array()) bad(where, "not an array");
  std::vector<PortForward> out;
  for (size_t i = 0; i < list.size(); ++i) {
    const json& f = list[i];
    std::string w = where + "[" + std::to_string(i) + "]";
    only(f, w, {"protocol", "host_ip", "host_port", "guest_port"});
    PortForward pf;
    pf.protocol = choice(f, w, "protocol", pf.protocol, kProtocols);
    pf.host_ip = string(f, w, "host_ip", pf.host_ip);
    pf.host_port = number<uint16_t>(f, w, "host_port", 0, 0, 65535);
    if (!f.contains("guest_port")) bad(w + ".guest_port", "missing");
    pf.guest_port = number<uint16_t>(f, w, "guest_port", 0, 1, 65535);
    out.push_back(std::move(pf));
  }
  return out;
}

}  // namespace

std::string machine_config_to_json(const MachineConfig& c) {
  json j = {{"memory_mib", c.memory_mib},
            {"hugepages", c.hugepages},
            {"vcpus", c.vcpus},
            {"kernel", c.kernel.string()},
            {"cmdline", c.cmdline},
            {"console_out_fd", c.console_out_fd},
            {"console_err_fd", c.console_err_fd},
            {"ready_fd", c.ready_fd},
            {"console_in_fd", c.console_in_fd},
            {"console_input", name_of(c.console_input, kConsoleInputs)},
            {"timeout_ms", c.timeout.count()},
            {"kvm_device", c.kvm_device.string()},
            {"seccomp", name_of(c.seccomp, kSeccompModes)}};
  if (!c.initrd.empty()) j["initrd"] = c.initrd.string();
  if (!c.restore_from.empty()) j["restore_from"] = c.restore_from.string();
  j["disks"] = json::array();
  for (const auto& d : c.disks)
    j["disks"].push_back(
        {{"path", d.path.string()}, {"mode", name_of(d.mode, kDiskModes)}, {"id", d.id}});
  if (c.net) {
    if (c.net->backend)
      throw Error(ErrorKind::kInvalidArgument,
                  "machine config: a network backend made by the caller has no JSON form");
    j["net"] = {{"mac", mac_string(c.net->mac)},
                {"mtu", c.net->mtu},
                {"user",
                 {{"outbound", c.net->user.outbound},
                  {"host_loopback", c.net->user.host_loopback},
                  {"forwards", forwards_json(c.net->user.forwards)}}}};
    if (c.net->tap)
      j["net"]["tap"] = {{"fd", c.net->tap->fd},
                         {"published", forwards_json(c.net->tap->published)}};
  }
  j["fs"] = json::array();
  for (const auto& f : c.fs) {
    json e = {{"tag", f.tag}};
    if (f.socket_fd >= 0)
      e["socket_fd"] = f.socket_fd;
    else
      e["socket_path"] = f.socket_path.string();
    j["fs"].push_back(std::move(e));
  }
  if (c.vsock)
    j["vsock"] = {{"guest_cid", c.vsock->guest_cid}, {"uds_path", c.vsock->uds_path.string()}};
  return j.dump();
}

MachineConfig machine_config_from_json(std::string_view text) {
  json j = json::parse(text, nullptr, false);
  if (j.is_discarded()) throw Error(ErrorKind::kInvalidArgument, "machine config: not valid JSON");
  only(j, "",
       {"memory_mib", "hugepages", "vcpus", "kernel", "cmdline", "initrd", "disks", "net", "fs",
        "vsock", "console_out_fd", "console_err_fd", "ready_fd", "console_in_fd", "console_input",
        "timeout_ms", "kvm_device", "seccomp", "restore_from"});
  MachineConfig c;
  c.memory_mib = number<uint64_t>(j, "", "memory_mib", c.memory_mib, 1, uint64_t(1) << 30);
  c.hugepages = boolean(j, "", "hugepages", c.hugepages);
  c.vcpus = number<unsigned>(j, "", "vcpus", c.vcpus, 1, 255);
  if (!j.contains("kernel")) bad("kernel", "missing");
  c.kernel = string(j, "", "kernel", "");
  if (c.kernel.empty()) bad("kernel", "empty");
  c.cmdline = string(j, "", "cmdline", c.cmdline);
  c.initrd = string(j, "", "initrd", "");
  c.restore_from = string(j, "", "restore_from", "");
  c.console_out_fd =
      number<int>(j, "", "console_out_fd", c.console_out_fd, -1, std::numeric_limits<int>::max());
  c.console_err_fd =
      number<int>(j, "", "console_err_fd", c.console_err_fd, -1, std::numeric_limits<int>::max());
  c.ready_fd = number<int>(j, "", "ready_fd", c.ready_fd, -1, std::numeric_limits<int>::max());
  c.console_in_fd =
      number<int>(j, "", "console_in_fd", c.console_in_fd, -1, std::numeric_limits<int>::max());
  c.console_input = choice(j, "", "console_input", c.console_input, kConsoleInputs);
  c.timeout = std::chrono::milliseconds(
      number<int64_t>(j, "", "timeout_ms", 0, 0, std::numeric_limits<int64_t>::max() / 1000));
  c.kvm_device = string(j, "", "kvm_device", c.kvm_device.string());
  c.seccomp = choice(j, "", "seccomp", c.seccomp, kSeccompModes);
  if (j.contains("disks")) {
    if (!j["disks"].is_array()) bad("disks", "not an array");
    for (size_t i = 0; i < j["disks"].size(); ++i) {
      const json& d = j["disks"][i];
      std::string w = "disks[" + std::to_string(i) + "]";
      only(d, w, {"path", "mode", "id"});
      DiskConfig dc;
      dc.path = string(d, w, "path", "");
      if (dc.path.empty()) bad(w + ".path", "missing or empty");
      dc.mode = choice(d, w, "mode", dc.mode, kDiskModes);
      dc.id = string(d, w, "id", "");
      c.disks.push_back(std::move(dc));
    }
  }
  if (j.contains("net") && !j["net"].is_null()) {
    const json& n = j["net"];
    only(n, "net", {"mac", "mtu", "user", "tap"});
    NicConfig nc;
    if (n.contains("mac")) nc.mac = parse_mac(string(n, "net", "mac", ""), "net.mac");
    nc.mtu = number<uint16_t>(n, "net", "mtu", nc.mtu, 68, 65520);
    if (n.contains("user")) {
      const json& u = n["user"];
      only(u, "net.user", {"outbound", "host_loopback", "forwards"});
      nc.user.outbound = boolean(u, "net.user", "outbound", nc.user.outbound);
      nc.user.host_loopback = boolean(u, "net.user", "host_loopback", nc.user.host_loopback);
      if (u.contains("forwards"))
        nc.user.forwards = parse_forwards(u["forwards"], "net.user.forwards");
    }
    if (n.contains("tap") && !n["tap"].is_null()) {
      const json& t = n["tap"];
      only(t, "net.tap", {"fd", "published"});
      TapFdConfig tc;
      if (!t.contains("fd")) bad("net.tap.fd", "missing");
      tc.fd = number<int>(t, "net.tap", "fd", -1, 0, std::numeric_limits<int>::max());
      if (t.contains("published"))
        tc.published = parse_forwards(t["published"], "net.tap.published");
      nc.tap = std::move(tc);
    }
    c.net = std::move(nc);
  }
  if (j.contains("fs")) {
    if (!j["fs"].is_array()) bad("fs", "not an array");
    for (size_t i = 0; i < j["fs"].size(); ++i) {
      const json& f = j["fs"][i];
      std::string w = "fs[" + std::to_string(i) + "]";
      only(f, w, {"tag", "socket_path", "socket_fd"});
      FsConfig fc;
      fc.tag = string(f, w, "tag", "");
      if (fc.tag.empty() || fc.tag.size() > 36) bad(w + ".tag", "must be 1 to 36 bytes");
      fc.socket_path = string(f, w, "socket_path", "");
      fc.socket_fd = number<int>(f, w, "socket_fd", -1, 0, std::numeric_limits<int>::max());
      if (fc.socket_path.empty() == (fc.socket_fd < 0))
        bad(w, "needs exactly one of socket_path and socket_fd");
      c.fs.push_back(std::move(fc));
    }
  }
  if (j.contains("vsock") && !j["vsock"].is_null()) {
    const json& v = j["vsock"];
    only(v, "vsock", {"guest_cid", "uds_path"});
    VsockConfig vc;
    vc.guest_cid = number<uint64_t>(v, "vsock", "guest_cid", vc.guest_cid, 3, 0xfffffffeull);
    vc.uds_path = string(v, "vsock", "uds_path", "");  // empty: no host side
    c.vsock = std::move(vc);
  }
  return c;
}

}  // namespace img2vm::vm
