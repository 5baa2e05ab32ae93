// What the workload's process is limited by before its exec (OCI process.rlimits and
// noNewPrivileges, guestabi::RunOverrides): applied in the forked child, after the init's own
// defaults and before it drops to the workload's user (raising a hard limit needs root).
#pragma once

#include <sys/types.h>

#include <vector>

#include "img2vm/guestabi/config.hpp"

namespace img2vm::init {

// setrlimit(2) for each limit, in order. Throws Error naming the limit that failed.
void apply_rlimits(const std::vector<guestabi::Rlimit>& limits);

// prctl(PR_SET_NO_NEW_PRIVS): the process and what it execs can gain no privilege (setuid
// bits, file capabilities). Throws Error when the kernel refuses.
void set_no_new_privileges();

// `groups` with each of `extra` that is not there yet appended, in order.
std::vector<gid_t> with_extra_groups(std::vector<gid_t> groups, const std::vector<uint32_t>& extra);

}  // namespace img2vm::init
