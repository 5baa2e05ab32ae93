#include "img2vm/init/user.hpp"

#include <cerrno>
#include <charconv>
#include <fstream>
#include <optional>
#include <sstream>

#include "img2vm/init/sys.hpp"

namespace img2vm::init {

namespace {

struct PasswdEntry {
  std::string name;
  unsigned long uid = 0;
  unsigned long gid = 0;
  std::string home;
};

struct GroupEntry {
  std::string name;
  unsigned long gid = 0;
  std::vector<std::string> members;
};

constexpr unsigned long kMaxId = 0x7fffffff;  // runc's range for uids and gids

std::vector<std::string> split(std::string_view s, char sep) {
  std::vector<std::string> out;
  std::size_t start = 0;
  while (true) {
    auto pos = s.find(sep, start);
    out.emplace_back(
        s.substr(start, pos == std::string_view::npos ? std::string_view::npos : pos - start));
    if (pos == std::string_view::npos) return out;
    start = pos + 1;
  }
}

std::optional<unsigned long> parse_id(std::string_view s) {
  if (s.empty() || s.find_first_not_of("0123456789") != std::string_view::npos) return std::nullopt;
  unsigned long v = 0;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || p != s.data() + s.size()) return kMaxId + 1;  // too large
  return v;
}

// Lines of a colon-separated database; an absent file is an empty one, as runc treats it.
std::vector<std::vector<std::string>> read_db(const std::filesystem::path& file) {
  std::vector<std::vector<std::string>> rows;
  std::ifstream in(file);
  if (!in) {
    if (errno == ENOENT || errno == ENOTDIR) return rows;
    throw_errno("reading " + file.string());
  }
  std::string line;
  while (std::getline(in, line)) {
    auto first = line.find_first_not_of(" \t");
    if (first == std::string::npos || line[first] == '#') continue;
    rows.push_back(split(line, ':'));
  }
  return rows;
}

std::vector<PasswdEntry> read_passwd(const std::filesystem::path& root) {
  std::vector<PasswdEntry> out;
  for (auto& f : read_db(root / "etc/passwd")) {
    if (f.size() < 4) continue;
    auto uid = parse_id(f[2]);
    auto gid = parse_id(f[3]);
    if (!uid || !gid || *uid > kMaxId || *gid > kMaxId) continue;
    out.push_back({f[0], *uid, *gid, f.size() > 5 ? f[5] : std::string()});
  }
  return out;
}

std::vector<GroupEntry> read_group(const std::filesystem::path& root) {
  std::vector<GroupEntry> out;
  for (auto& f : read_db(root / "etc/group")) {
    if (f.size() < 3) continue;
    auto gid = parse_id(f[2]);
    if (!gid || *gid > kMaxId) continue;
    GroupEntry g{f[0], *gid, {}};
    if (f.size() > 3 && !f[3].empty())
      for (auto& m : split(f[3], ','))
        if (!m.empty()) g.members.push_back(m);
    out.push_back(std::move(g));
  }
  return out;
}

[[noreturn]] void out_of_range(std::string_view what, std::string_view value) {
  throw Error(std::string(what) + " " + std::string(value) + " is out of range (0-" +
              std::to_string(kMaxId) + ")");
}

}  // namespace

ExecUser resolve_user(const std::filesystem::path& root, std::string_view spec) {
  std::string_view user_arg = spec;
  std::string_view group_arg;
  bool has_group = false;
  if (auto colon = spec.find(':'); colon != std::string_view::npos) {
    user_arg = spec.substr(0, colon);
    group_arg = spec.substr(colon + 1);
    has_group = !group_arg.empty();
  }

  ExecUser u;
  auto passwd = read_passwd(root);
  const PasswdEntry* match = nullptr;
  auto user_id = parse_id(user_arg);
  if (user_id && *user_id > kMaxId) out_of_range("user id", user_arg);
  if (user_arg.empty()) {
    for (const auto& p : passwd)
      if (p.uid == 0) {
        match = &p;
        break;
      }
  } else {
    for (const auto& p : passwd) {
      if (user_id ? p.uid == *user_id : p.name == user_arg) {
        match = &p;
        break;
      }
    }
    if (!match && !user_id)
      throw Error("unable to find user " + std::string(user_arg) +
                  ": no matching entries in passwd file");
  }
  if (match) {
    u.uid = static_cast<uid_t>(match->uid);
    u.gid = static_cast<gid_t>(match->gid);
    if (!match->home.empty()) u.home = match->home;
  } else if (user_id) {
    u.uid = static_cast<uid_t>(*user_id);
  }

  // Supplementary groups come from /etc/group membership of the matched user name; an explicit
  // group replaces the primary group and brings no supplementary ones (runc's GetExecUser).
  if (has_group || match) {
    auto groups = read_group(root);
    if (has_group) {
      auto gid = parse_id(group_arg);
      if (gid && *gid > kMaxId) out_of_range("group id", group_arg);
      const GroupEntry* g = nullptr;
      for (const auto& e : groups)
        if (e.name == group_arg || (gid && e.gid == *gid)) {
          g = &e;
          break;
        }
      if (g) {
        u.gid = static_cast<gid_t>(g->gid);
      } else if (gid) {
        u.gid = static_cast<gid_t>(*gid);
      } else {
        throw Error("unable to find group " + std::string(group_arg) +
                    ": no matching entries in group file");
      }
    } else if (match) {
      for (const auto& e : groups)
        for (const auto& m : e.members)
          if (m == match->name) {
            u.groups.push_back(static_cast<gid_t>(e.gid));
            break;
          }
    }
  }
  return u;
}

}  // namespace img2vm::init
