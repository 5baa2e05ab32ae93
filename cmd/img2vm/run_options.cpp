#include "run_options.hpp"

#include <arpa/inet.h>

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <fstream>
#include <sstream>

#include "img2vm/base/error.hpp"

namespace img2vm::cli {

namespace fs = std::filesystem;

HostEnv process_env() {
  return [](const std::string& key) -> std::optional<std::string> {
    if (const char* v = std::getenv(key.c_str())) return std::string(v);
    return std::nullopt;
  };
}

uint64_t parse_size(const std::string& flag, const std::string& text) {
  size_t pos = 0;
  unsigned long long v = 0;
  try {
    if (!text.empty() && text[0] != '-') v = std::stoull(text, &pos);
  } catch (const std::exception&) {
    pos = 0;
  }
  if (pos == 0)
    throw Error(ErrorKind::kInvalidArgument,
                flag + ": \"" + text + "\" is not a size (e.g. 512M, 2G)");
  std::string unit = text.substr(pos);
  uint64_t mul = 1;
  if (unit == "" || unit == "B" || unit == "b")
    mul = 1;
  else if (unit == "K" || unit == "KiB" || unit == "k")
    mul = 1ull << 10;
  else if (unit == "M" || unit == "MiB" || unit == "m")
    mul = 1ull << 20;
  else if (unit == "G" || unit == "GiB" || unit == "g")
    mul = 1ull << 30;
  else if (unit == "T" || unit == "TiB" || unit == "t")
    mul = 1ull << 40;
  else
    throw Error(ErrorKind::kInvalidArgument,
                flag + ": unknown unit \"" + unit + "\" in \"" + text + "\"");
  if (v > UINT64_MAX / mul)
    throw Error(ErrorKind::kInvalidArgument, flag + ": \"" + text + "\" is too large");
  return v * mul;
}

namespace {

bool has_space(const std::string& s) {
  for (unsigned char c : s)
    if (std::isspace(c)) return true;
  return false;
}

// Appends one -e / --env-file entry: KEY=VALUE as is, KEY alone from the host (if set there).
void add_env(std::vector<std::string>& out, const std::string& entry, const HostEnv& host,
             const std::string& where) {
  auto eq = entry.find('=');
  std::string key = entry.substr(0, eq);
  if (key.empty())
    throw Error(ErrorKind::kInvalidArgument,
                where + ": invalid environment variable \"" + entry + "\" (no name)");
  if (has_space(key))
    throw Error(ErrorKind::kInvalidArgument,
                where + ": variable \"" + key + "\" contains whitespace");
  if (eq != std::string::npos) {
    out.push_back(entry);
  } else if (auto v = host(key)) {
    out.push_back(key + "=" + *v);
  }
}

}  // namespace

std::vector<std::string> parse_env_file(const fs::path& file, const HostEnv& host) {
  std::ifstream in(file, std::ios::binary);
  if (!in) throw Error(ErrorKind::kNotFound, "--env-file " + file.string() + ": cannot open it");
  std::vector<std::string> out;
  std::string line;
  for (unsigned n = 1; std::getline(in, line); ++n) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    size_t start = 0;
    while (start < line.size() && std::isspace(static_cast<unsigned char>(line[start]))) ++start;
    line.erase(0, start);
    if (line.empty() || line[0] == '#') continue;
    add_env(out, line, host, "--env-file " + file.string() + " line " + std::to_string(n));
  }
  if (in.bad()) throw Error(ErrorKind::kIo, "--env-file " + file.string() + ": read error");
  return out;
}

guestabi::RunOverrides build_overrides(const RunRequest& r, const HostEnv& host) {
  guestabi::RunOverrides o;
  for (const auto& f : r.env_files)
    for (auto& e : parse_env_file(f, host)) o.env.push_back(std::move(e));
  for (const auto& e : r.env) add_env(o.env, e, host, "-e");
  if (r.entrypoint) {
    // docker takes --entrypoint as one executable (no word splitting); "" resets it.
    o.entrypoint = r.entrypoint->empty() ? std::vector<std::string>{}
                                         : std::vector<std::string>{*r.entrypoint};
  }
  if (!r.cmd.empty()) o.cmd = r.cmd;
  if (!r.workdir.empty()) {
    if (r.workdir[0] != '/')
      throw Error(ErrorKind::kInvalidArgument,
                  "-w " + r.workdir + ": the working directory must be an absolute path");
    o.working_dir = r.workdir;
  }
  if (!r.user.empty()) o.user = r.user;
  if (!r.hostname.empty()) o.hostname = r.hostname;
  o.dns = r.dns;
  o.tty = r.tty;
  o.interactive = r.interactive;
  return o;
}

std::chrono::milliseconds parse_duration(const std::string& flag, const std::string& text) {
  auto bad = [&] {
    return Error(ErrorKind::kInvalidArgument,
                 flag + ": \"" + text + "\" is not a duration (e.g. 30s, 5m, 1m30s, 500ms)");
  };
  if (text.empty()) throw bad();
  // A plain number is seconds.
  if (text.find_first_not_of("0123456789") == std::string::npos) {
    if (text.size() > 9) throw bad();
    return std::chrono::seconds(std::stoull(text));
  }
  uint64_t total_ms = 0;
  size_t i = 0;
  while (i < text.size()) {
    size_t j = i;
    while (j < text.size() && std::isdigit(static_cast<unsigned char>(text[j]))) ++j;
    if (j == i || j - i > 9) throw bad();
    uint64_t v = std::stoull(text.substr(i, j - i));
    size_t k = j;
    while (k < text.size() && std::isalpha(static_cast<unsigned char>(text[k]))) ++k;
    std::string unit = text.substr(j, k - j);
    uint64_t mul;
    if (unit == "ms")
      mul = 1;
    else if (unit == "s")
      mul = 1000;
    else if (unit == "m")
      mul = 60'000;
    else if (unit == "h")
      mul = 3'600'000;
    else
      throw bad();
    total_ms += v * mul;
    i = k;
  }
  return std::chrono::milliseconds(total_ms);
}

uint64_t parse_memory_mib(const std::string& text) {
  uint64_t mib;
  if (!text.empty() && text.find_first_not_of("0123456789") == std::string::npos) {
    if (text.size() > 9)
      throw Error(ErrorKind::kInvalidArgument, "--memory: \"" + text + "\" is too large");
    mib = std::stoull(text);
  } else {
    uint64_t bytes = parse_size("--memory", text);
    if (bytes % (1ull << 20) != 0)
      throw Error(ErrorKind::kInvalidArgument,
                  "--memory: \"" + text + "\" is not a whole number of MiB");
    mib = bytes >> 20;
  }
  if (mib < 32)
    throw Error(ErrorKind::kInvalidArgument, "--memory: " + text + " is too small (at least 32M)");
  if (mib > (1ull << 20))
    throw Error(ErrorKind::kInvalidArgument, "--memory: " + text + " is too large");
  return mib;
}

ExtraDisk parse_disk(const std::string& text) {
  ExtraDisk d;
  std::string path = text;
  auto colon = text.rfind(':');
  if (colon != std::string::npos) {
    std::string mode = text.substr(colon + 1);
    if (mode == "ro" || mode == "rw") {
      d.read_only = mode == "ro";
      path = text.substr(0, colon);
    }
  }
  if (path.empty())
    throw Error(ErrorKind::kInvalidArgument, "--disk \"" + text + "\": no file given (FILE[:ro])");
  d.path = path;
  return d;
}

namespace {

bool parse_switch(const std::string& flag, const std::string& key, const std::string& value) {
  if (value == "on" || value == "true" || value == "1" || value == "yes") return true;
  if (value == "off" || value == "false" || value == "0" || value == "no") return false;
  throw Error(ErrorKind::kInvalidArgument,
              flag + ": " + key + "=" + value + ": the value must be on or off (true/false)");
}

}  // namespace

NetworkChoice parse_network(const std::string& text) {
  const std::string flag = "--network " + text;
  NetworkChoice c;
  std::string mode = text, opts;
  if (auto colon = text.find(':'); colon != std::string::npos) {
    mode = text.substr(0, colon);
    opts = text.substr(colon + 1);
  }
  const bool user = mode == "user" || mode == "bridge" || mode == "default" || mode == "slirp";
  const bool tap = mode == "tap" || mode.rfind("tap=", 0) == 0;
  if (!user && !tap && !opts.empty())
    throw Error(ErrorKind::kInvalidArgument,
                flag + ": only user and tap networking take options after ':'");
  if (mode == "none") {
    c.mode = NetworkChoice::Mode::kNone;
    return c;
  }
  if (tap) {
    c.mode = NetworkChoice::Mode::kTap;
    if (mode.size() >= 4) {
      c.tap_name = mode.substr(4);
      // IFNAMSIZ is 16 with the NUL; the kernel refuses '/', ':' and blanks in names.
      if (c.tap_name.empty() || c.tap_name.size() > 15 || c.tap_name == "." || c.tap_name == ".." ||
          c.tap_name.find_first_of("/: \t\n") != std::string::npos)
        throw Error(
            ErrorKind::kInvalidArgument,
            flag + ": \"" + c.tap_name +
                "\" is not a valid interface name (1-15 characters, no '/', ':' or blanks)");
    }
  }
  if (user || tap) {
    size_t pos = 0;
    while (!opts.empty() && pos <= opts.size()) {
      size_t comma = opts.find(',', pos);
      std::string item =
          opts.substr(pos, comma == std::string::npos ? std::string::npos : comma - pos);
      pos = comma == std::string::npos ? opts.size() + 1 : comma + 1;
      auto eq = item.find('=');
      std::string key = item.substr(0, eq),
                  value = eq == std::string::npos ? "on" : item.substr(eq + 1);
      std::replace(key.begin(), key.end(), '-', '_');
      if (key == "outbound")
        c.outbound = parse_switch("--network", key, value);
      else if (user && (key == "host_loopback" || key == "allow_host_loopback"))
        c.host_loopback = parse_switch("--network", key, value);
      else
        throw Error(ErrorKind::kInvalidArgument,
                    flag + ": unknown option \"" + item + "\" (" +
                        (user ? "user networking takes outbound=on|off, host_loopback=on|off"
                              : "tap networking takes outbound=on|off") +
                        ")");
    }
    return c;
  }
  if (mode == "host")
    throw Error(ErrorKind::kUnsupported, flag +
                                             ": a VM has its own kernel and cannot share the "
                                             "host's network stack; publish ports with -p");
  if (mode.rfind("container", 0) == 0)
    throw Error(ErrorKind::kUnsupported, flag + ": joining another VM's network is not supported");
  throw Error(ErrorKind::kInvalidArgument,
              flag + ": unknown network (use user, none or tap[=NAME])");
}

bool looks_like_image(const std::string& word) {
  if (word.rfind("oci:", 0) == 0 || word.rfind("docker-archive:", 0) == 0) return true;
  if (word.empty() || word[0] == '/' || word[0] == '.') return false;
  if (word.find_first_of(":@") != std::string::npos) return true;
  auto slash = word.find('/');
  if (slash == std::string::npos) return false;
  std::string host = word.substr(0, slash);
  return host.find('.') != std::string::npos || host == "localhost";
}

}  // namespace img2vm::cli
