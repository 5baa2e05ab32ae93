#include "img2vm/init/limits.hpp"

#include <sys/prctl.h>
#include <sys/resource.h>

#include <algorithm>

#include "img2vm/init/sys.hpp"

namespace img2vm::init {

void apply_rlimits(const std::vector<guestabi::Rlimit>& limits) {
  for (const auto& l : limits) {
    std::optional<int> resource = guestabi::rlimit_resource(l.type);
    if (!resource) throw Error("setrlimit " + l.type + ": not a limit Linux has");
    struct rlimit r {};
    r.rlim_cur = static_cast<rlim_t>(l.soft);
    r.rlim_max = static_cast<rlim_t>(l.hard);
    if (::setrlimit(*resource, &r) != 0)
      throw_errno("setrlimit " + l.type + " " + std::to_string(l.soft) + " " +
                  std::to_string(l.hard));
  }
}

void set_no_new_privileges() {
  if (::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) throw_errno("prctl(PR_SET_NO_NEW_PRIVS)");
}

std::vector<gid_t> with_extra_groups(std::vector<gid_t> groups,
                                     const std::vector<uint32_t>& extra) {
  for (uint32_t g : extra)
    if (std::find(groups.begin(), groups.end(), static_cast<gid_t>(g)) == groups.end())
      groups.push_back(static_cast<gid_t>(g));
  return groups;
}

}  // namespace img2vm::init
