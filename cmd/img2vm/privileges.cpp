#include "privileges.hpp"

#include <grp.h>
#include <linux/capability.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <string>

#include "img2vm/base/error.hpp"

namespace img2vm::cli {

namespace {

constexpr uid_t kNobody = 65534;
constexpr gid_t kNogroup = 65534;

// A positive decimal id from the environment, or 0.
unsigned long env_id(const char* name) {
  const char* v = std::getenv(name);
  if (!v || !*v) return 0;
  char* end = nullptr;
  errno = 0;
  unsigned long id = std::strtoul(v, &end, 10);
  if (errno || *end || id >= 0xffffffffUL) return 0;
  return id;
}

// The three capability sets (effective, permitted, inheritable), 64 bits each.
void get_caps(__user_cap_data_struct (&data)[2]) {
  __user_cap_header_struct hdr{_LINUX_CAPABILITY_VERSION_3, 0};
  if (::syscall(SYS_capget, &hdr, data) != 0) throw_errno("dropping privileges: capget");
}

}  // namespace

RunAs unprivileged_identity() {
  if (::geteuid() != 0) return {::getuid(), ::getgid()};
  unsigned long uid = env_id("SUDO_UID"), gid = env_id("SUDO_GID");
  if (uid != 0 && gid != 0) return {uid_t(uid), gid_t(gid)};
  return {kNobody, kNogroup};
}

void drop_privileges(const RunAs& who) {
  if (who.uid == 0 || who.gid == 0)
    throw Error(ErrorKind::kInvalidArgument, "dropping privileges: not to root (uid/gid 0)");
  int pdeath = 0;
  ::prctl(PR_GET_PDEATHSIG, &pdeath);
  const pid_t parent = ::getppid();
  if (::geteuid() == 0) {
    // The bounding set (what an exec could still gain) needs CAP_SETPCAP, which goes next.
    for (unsigned long cap = 0; cap < 64; ++cap)
      if (::prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 && errno == EINVAL) break;
    if (::setgroups(0, nullptr) != 0) throw_errno("dropping privileges: setgroups");
  }
  if (::setresgid(who.gid, who.gid, who.gid) != 0)
    throw_errno("dropping privileges: setresgid " + std::to_string(who.gid));
  if (::setresuid(who.uid, who.uid, who.uid) != 0)
    throw_errno("dropping privileges: setresuid " + std::to_string(who.uid));
  // Leaving root cleared the effective and permitted sets; the inheritable and ambient ones
  // are cleared here (whatever the caller had, root or not).
  (void)::prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0);
  {
    __user_cap_header_struct hdr{_LINUX_CAPABILITY_VERSION_3, 0};
    __user_cap_data_struct none[2] = {};
    if (::syscall(SYS_capset, &hdr, none) != 0) throw_errno("dropping privileges: capset");
  }
  if (::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0)
    throw_errno("dropping privileges: no_new_privs");
  // Changing the uid cleared the parent-death signal.
  if (pdeath != 0) {
    if (::prctl(PR_SET_PDEATHSIG, pdeath, 0, 0, 0) != 0)
      throw_errno("dropping privileges: PR_SET_PDEATHSIG");
    if (::getppid() != parent)
      throw Error(ErrorKind::kIo, "the process that started the VMM has ended");
  }

  uid_t r, e, s;
  gid_t rg, eg, sg;
  if (::getresuid(&r, &e, &s) != 0 || ::getresgid(&rg, &eg, &sg) != 0)
    throw_errno("dropping privileges: getresuid");
  if (r != who.uid || e != who.uid || s != who.uid || rg != who.gid || eg != who.gid ||
      sg != who.gid)
    throw Error(ErrorKind::kInternal, "dropping privileges: the user or group did not change");
  __user_cap_data_struct left[2] = {};
  get_caps(left);
  for (const auto& d : left)
    if (d.effective || d.permitted || d.inheritable)
      throw Error(ErrorKind::kInternal, "dropping privileges: capabilities are left");
  for (unsigned long cap = 0; cap < 64; ++cap) {
    int v = ::prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_IS_SET, cap, 0, 0);
    if (v < 0) break;
    if (v > 0)
      throw Error(ErrorKind::kInternal, "dropping privileges: ambient capabilities are left");
  }
}

}  // namespace img2vm::cli
