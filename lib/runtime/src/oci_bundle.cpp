// config.json of an OCI bundle (oci_bundle.hpp), checked field by field.
#include "img2vm/runtime/oci_bundle.hpp"

#include <cerrno>
#include <charconv>
#include <nlohmann/json.hpp>

#include "img2vm/base/error.hpp"
#include "img2vm/base/fd.hpp"

namespace img2vm::runtime {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr size_t kMaxString = 1u << 20;

[[noreturn]] void bad(const std::string& where, const std::string& why) {
  throw Error(ErrorKind::kInvalidArgument, "config.json: " + where + ": " + why);
}

// The member `key` of `j` when present and not null.
const json* member(const json& j, const char* key) {
  auto it = j.find(key);
  return it == j.end() || it->is_null() ? nullptr : &*it;
}

std::string str(const json& v, const std::string& where) {
  if (!v.is_string()) bad(where, "not a string");
  const auto& s = v.get_ref<const std::string&>();
  if (s.size() > kMaxString) bad(where, "longer than 1 MiB");
  return s;
}

std::vector<std::string> strings(const json& v, const std::string& where) {
  if (!v.is_array()) bad(where, "not an array");
  if (v.size() > OciBundle::kMaxStrings)
    throw Error(ErrorKind::kLimit, "config.json: " + where + ": more than " +
                                       std::to_string(OciBundle::kMaxStrings) + " entries");
  std::vector<std::string> out;
  for (size_t i = 0; i < v.size(); ++i)
    out.push_back(str(v[i], where + "[" + std::to_string(i) + "]"));
  return out;
}

template <typename T>
T number(const json& v, const std::string& where) {
  if (!v.is_number_integer()) bad(where, "not an integer");
  if (v.is_number_unsigned()) {
    auto u = v.get<uint64_t>();
    if (u > uint64_t(std::numeric_limits<T>::max())) bad(where, "out of range");
    return T(u);
  }
  auto s = v.get<int64_t>();
  if (s < int64_t(std::numeric_limits<T>::min()) ||
      (s > 0 && uint64_t(s) > uint64_t(std::numeric_limits<T>::max())))
    bad(where, "out of range");
  return T(s);
}

bool boolean(const json& v, const std::string& where) {
  if (!v.is_boolean()) bad(where, "not a boolean");
  return v.get<bool>();
}

void read_process(const json& p, OciBundle& b) {
  if (!p.is_object()) bad("process", "not an object");
  const json* args = member(p, "args");
  if (!args) bad("process.args", "missing (the command to run)");
  b.args = strings(*args, "process.args");
  if (b.args.empty() || b.args[0].empty()) bad("process.args", "empty");
  if (const json* e = member(p, "env")) b.env = strings(*e, "process.env");
  for (size_t i = 0; i < b.env.size(); ++i)
    if (b.env[i].find('=') == std::string::npos || b.env[i][0] == '=')
      bad("process.env[" + std::to_string(i) + "]", "not KEY=VALUE");
  const json* cwd = member(p, "cwd");
  if (!cwd) bad("process.cwd", "missing");
  b.cwd = str(*cwd, "process.cwd");
  if (b.cwd.empty() || b.cwd[0] != '/') bad("process.cwd", "not an absolute path");
  if (const json* t = member(p, "terminal")) b.terminal = boolean(*t, "process.terminal");
  if (const json* n = member(p, "noNewPrivileges"))
    b.no_new_privileges = boolean(*n, "process.noNewPrivileges");
  if (const json* u = member(p, "user")) {
    if (!u->is_object()) bad("process.user", "not an object");
    if (const json* v = member(*u, "uid")) b.uid = number<uint32_t>(*v, "process.user.uid");
    if (const json* v = member(*u, "gid")) b.gid = number<uint32_t>(*v, "process.user.gid");
    if (const json* g = member(*u, "additionalGids")) {
      if (!g->is_array()) bad("process.user.additionalGids", "not an array");
      if (g->size() > OciBundle::kMaxStrings)
        throw Error(ErrorKind::kLimit, "config.json: process.user.additionalGids: too many");
      for (size_t i = 0; i < g->size(); ++i)
        b.additional_gids.push_back(
            number<uint32_t>((*g)[i], "process.user.additionalGids[" + std::to_string(i) + "]"));
    }
    if (member(*u, "umask")) b.unhonoured.push_back("process.user.umask: the init's 022 applies");
    if (member(*u, "username")) b.unhonoured.push_back("process.user.username: Windows only");
  }
  if (const json* r = member(p, "rlimits")) {
    if (!r->is_array()) bad("process.rlimits", "not an array");
    if (r->size() > 64) throw Error(ErrorKind::kLimit, "config.json: process.rlimits: too many");
    for (size_t i = 0; i < r->size(); ++i) {
      const std::string w = "process.rlimits[" + std::to_string(i) + "]";
      const json& e = (*r)[i];
      if (!e.is_object() || !member(e, "type") || !member(e, "soft") || !member(e, "hard"))
        bad(w, "needs type, soft and hard");
      OciRlimit l{str(e["type"], w + ".type"), number<uint64_t>(e["soft"], w + ".soft"),
                  number<uint64_t>(e["hard"], w + ".hard")};
      if (l.type.rfind("RLIMIT_", 0) != 0) bad(w + ".type", "not an RLIMIT_ name");
      if (l.soft > l.hard) bad(w, "soft above hard");
      b.rlimits.push_back(std::move(l));
    }
  }
  for (const char* k : {"capabilities", "apparmorProfile", "selinuxLabel", "oomScoreAdj",
                        "ioPriority", "scheduler", "execCPUAffinity"})
    if (member(p, k))
      b.unhonoured.push_back(std::string("process.") + k +
                             ": the VM is the sandbox; not applied inside it");
}

// The mount options `opts` of mount `w`, split into what is understood.
struct Options {
  bool bind = false, read_only = false;
  uint64_t size = 0;
  uint32_t mode = 0;
};

Options read_options(const std::vector<std::string>& opts, const std::string& w) {
  Options o;
  for (const auto& s : opts) {
    if (s == "bind" || s == "rbind") {
      o.bind = true;
    } else if (s == "ro") {
      o.read_only = true;
    } else if (s.rfind("size=", 0) == 0 || s.rfind("mode=", 0) == 0) {
      const bool size = s[0] == 's';
      std::string_view v = std::string_view(s).substr(5);
      uint64_t mult = 1;
      if (size && !v.empty()) {
        switch (v.back()) {
          case 'k':
          case 'K':
            mult = 1u << 10;
            break;
          case 'm':
          case 'M':
            mult = 1u << 20;
            break;
          case 'g':
          case 'G':
            mult = 1u << 30;
            break;
          default:
            break;
        }
        if (mult != 1) v.remove_suffix(1);
      }
      uint64_t n = 0;
      auto [end, ec] = std::from_chars(v.data(), v.data() + v.size(), n, size ? 10 : 8);
      if (v.empty() || ec != std::errc() || end != v.data() + v.size() ||
          (size && n > UINT64_MAX / mult) || (!size && n > 07777))
        bad(w + ".options", "bad " + s);
      if (size)
        o.size = n * mult;
      else
        o.mode = uint32_t(n);
    }
    // Others (nosuid, nodev, noexec, rw, rprivate, relatime, ...) change nothing a VM's share
    // or tmpfs needs.
  }
  return o;
}

void read_mounts(const json& ms, OciBundle& b) {
  if (!ms.is_array()) bad("mounts", "not an array");
  if (ms.size() > OciBundle::kMaxStrings)
    throw Error(ErrorKind::kLimit, "config.json: mounts: too many");
  for (size_t i = 0; i < ms.size(); ++i) {
    const std::string w = "mounts[" + std::to_string(i) + "]";
    const json& m = ms[i];
    if (!m.is_object()) bad(w, "not an object");
    const json* d = member(m, "destination");
    if (!d) bad(w + ".destination", "missing");
    const std::string dest = str(*d, w + ".destination");
    if (dest.empty() || dest[0] != '/') bad(w + ".destination", "not an absolute path");
    const std::string type = member(m, "type") ? str(m["type"], w + ".type") : "";
    const std::string source = member(m, "source") ? str(m["source"], w + ".source") : "";
    const Options o = read_options(
        member(m, "options") ? strings(m["options"], w + ".options") : std::vector<std::string>{},
        w);
    if (type == "proc" || type == "sysfs" || type == "devpts" || type == "mqueue" ||
        type == "cgroup" || type == "cgroup2") {
      b.kernel_mounts.push_back(dest);
      continue;
    }
    Mount mt;
    // Normalised as Mount's targets are: "/data/", "//data" and "/x/../data" are "/data".
    mt.target = fs::path(dest).lexically_normal().string();
    while (mt.target.size() > 1 && mt.target.back() == '/') mt.target.pop_back();
    mt.read_only = o.read_only;
    if (type == "tmpfs") {
      mt.type = Mount::Type::kTmpfs;
      mt.size = o.size;
      mt.mode = o.mode;
    } else if (o.bind || type == "bind" || type == "none" || type.empty()) {
      if (source.empty()) bad(w + ".source", "missing for a bind mount");
      mt.type = Mount::Type::kBind;
      mt.source = fs::path(source).is_absolute() ? fs::path(source) : b.dir / source;
    } else {
      b.unhonoured.push_back(w + ": type " + type + " at " + dest +
                             " cannot be mounted in the VM (only bind, tmpfs and the kernel's)");
      continue;
    }
    if (mt.target == "/") bad(w + ".destination", "\"/\" is the root");
    b.mounts.push_back(std::move(mt));
  }
}

unsigned cpuset_count(const std::string& set, const std::string& w) {
  unsigned count = 0;
  size_t pos = 0;
  while (pos <= set.size()) {
    size_t comma = set.find(',', pos);
    std::string_view part(set.data() + pos,
                          (comma == std::string::npos ? set.size() : comma) - pos);
    unsigned lo = 0, hi = 0;
    auto dash = part.find('-');
    auto parse = [&](std::string_view t, unsigned& out) {
      auto [end, ec] = std::from_chars(t.data(), t.data() + t.size(), out);
      if (t.empty() || ec != std::errc() || end != t.data() + t.size() || out > 4095)
        bad(w, "bad cpu list " + set);
    };
    parse(part.substr(0, dash), lo);
    hi = lo;
    if (dash != std::string_view::npos) parse(part.substr(dash + 1), hi);
    if (hi < lo) bad(w, "bad cpu list " + set);
    count += hi - lo + 1;
    if (comma == std::string::npos) break;
    pos = comma + 1;
  }
  return count;
}

void read_linux(const json& l, OciBundle& b) {
  if (!l.is_object()) bad("linux", "not an object");
  if (const json* r = member(l, "resources")) {
    if (!r->is_object()) bad("linux.resources", "not an object");
    if (const json* m = member(*r, "memory")) {
      if (!m->is_object()) bad("linux.resources.memory", "not an object");
      if (const json* lim = member(*m, "limit")) {
        int64_t v = number<int64_t>(*lim, "linux.resources.memory.limit");
        if (v > 0) b.memory_limit = uint64_t(v);  // -1: unlimited
      }
    }
    if (const json* c = member(*r, "cpu")) {
      if (!c->is_object()) bad("linux.resources.cpu", "not an object");
      const json* q = member(*c, "quota");
      const json* p = member(*c, "period");
      if (q && p) {
        int64_t quota = number<int64_t>(*q, "linux.resources.cpu.quota");
        uint64_t period = number<uint64_t>(*p, "linux.resources.cpu.period");
        if (quota > 0 && period > 0) b.cpus = unsigned((uint64_t(quota) + period - 1) / period);
      }
      if (!b.cpus)
        if (const json* s = member(*c, "cpus"))
          if (unsigned n =
                  cpuset_count(str(*s, "linux.resources.cpu.cpus"), "linux.resources.cpu.cpus"))
            b.cpus = n;
    }
    for (const char* k : {"devices", "pids", "blockIO", "hugepageLimits", "network", "rdma"})
      if (member(*r, k))
        b.unhonoured.push_back(std::string("linux.resources.") + k +
                               ": the host's cgroups do not reach inside the VM");
  }
  if (const json* ns = member(l, "namespaces")) {
    if (!ns->is_array()) bad("linux.namespaces", "not an array");
    if (ns->size() > 64) throw Error(ErrorKind::kLimit, "config.json: linux.namespaces: too many");
    for (size_t i = 0; i < ns->size(); ++i) {
      const std::string w = "linux.namespaces[" + std::to_string(i) + "]";
      const json& n = (*ns)[i];
      if (!n.is_object() || !member(n, "type")) bad(w, "needs a type");
      if (str(n["type"], w + ".type") != "network") continue;
      b.host_network = false;
      if (member(n, "path")) b.network_namespace = str(n["path"], w + ".path");
    }
  }
  for (const char* k : {"seccomp", "devices", "maskedPaths", "readonlyPaths", "sysctl",
                        "uidMappings", "gidMappings", "intelRdt", "personality"})
    if (member(l, k))
      b.unhonoured.push_back(std::string("linux.") + k + ": the VM is the sandbox; not applied");
}

}  // namespace

OciBundle parse_oci_config(const std::string& text, const fs::path& dir) {
  if (text.size() > OciBundle::kMaxConfigBytes)
    throw Error(ErrorKind::kLimit, "config.json: larger than 4 MiB");
  json j = json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_object())
    throw Error(ErrorKind::kInvalidArgument, "config.json: not a JSON object");
  OciBundle b;
  b.dir = dir;
  const json* v = member(j, "ociVersion");
  if (!v) bad("ociVersion", "missing");
  b.oci_version = str(*v, "ociVersion");
  if (b.oci_version.rfind("1.", 0) != 0)
    throw Error(ErrorKind::kUnsupported,
                "config.json: ociVersion " + b.oci_version + " is not 1.x (img2vm-oci reads 1.x)");
  const json* root = member(j, "root");
  if (!root || !root->is_object() || !member(*root, "path"))
    bad("root.path", "missing (the root file system)");
  fs::path rp = str((*root)["path"], "root.path");
  if (rp.empty()) bad("root.path", "empty");
  b.root = rp.is_absolute() ? rp : dir / rp;
  if (const json* ro = member(*root, "readonly")) b.root_readonly = boolean(*ro, "root.readonly");
  const json* p = member(j, "process");
  if (!p) bad("process", "missing (create needs a process)");
  read_process(*p, b);
  if (const json* h = member(j, "hostname")) b.hostname = str(*h, "hostname");
  if (b.hostname.size() > 64) bad("hostname", "longer than 64 bytes");
  if (const json* ms = member(j, "mounts")) read_mounts(*ms, b);
  if (const json* a = member(j, "annotations")) {
    if (!a->is_object()) bad("annotations", "not an object");
    if (a->size() > OciBundle::kMaxStrings)
      throw Error(ErrorKind::kLimit, "config.json: annotations: too many");
    for (const auto& [k, val] : a->items()) b.annotations[k] = str(val, "annotations." + k);
  }
  if (const json* l = member(j, "linux")) read_linux(*l, b);
  if (member(j, "hooks")) b.unhonoured.push_back("hooks: not run (they would run on the host)");
  return b;
}

OciBundle parse_oci_process(const std::string& text) {
  try {
    if (text.size() > OciBundle::kMaxConfigBytes)
      throw Error(ErrorKind::kLimit, "config.json: larger than 4 MiB");
    json j = json::parse(text, nullptr, false);
    if (j.is_discarded() || !j.is_object()) bad("process", "not a JSON object");
    OciBundle b;
    read_process(j, b);
    return b;
  } catch (const Error& e) {
    // The same checks as config.json's process, named for the file they read here.
    std::string msg = e.what();
    const std::string from = "config.json: ";
    if (msg.rfind(from, 0) == 0) msg = "the process JSON: " + msg.substr(from.size());
    throw Error(e.kind(), msg);
  }
}

OciBundle load_oci_bundle(const fs::path& dir) {
  const fs::path abs = fs::absolute(dir).lexically_normal();
  const fs::path cfg = abs / "config.json";
  std::error_code ec;
  if (!fs::is_regular_file(cfg, ec))
    throw Error(ErrorKind::kNotFound, "no config.json in the bundle " + abs.string());
  return parse_oci_config(read_file(cfg, OciBundle::kMaxConfigBytes + 1), abs);
}

}  // namespace img2vm::runtime
