// Giving up root for good: img2vm-vmm, started as root by `img2vm run --network tap` (which sets
// the tap device and its rules up as root), becomes an ordinary user once the VM is set up and
// before the guest runs, so that a guest that took over the VMM holds no privilege.
#pragma once

#include <sys/types.h>

namespace img2vm::cli {

struct RunAs {
  uid_t uid = 0;
  gid_t gid = 0;
};

// Who the VMM becomes: the caller itself when it is not root; under sudo the user who ran sudo
// (SUDO_UID/SUDO_GID); else nobody (65534:65534).
RunAs unprivileged_identity();

// Becomes `who` for good: no supplementary groups, real, effective and saved uid and gid set,
// no capability left (the bounding set emptied too when root), no_new_privs. A parent-death
// signal that was set stays set. Throws Error naming the step that failed, or what was left.
void drop_privileges(const RunAs& who);

}  // namespace img2vm::cli
