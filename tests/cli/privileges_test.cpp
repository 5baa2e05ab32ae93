// Giving up root (cmd/img2vm/privileges.hpp), as img2vm-vmm does for --network tap: who it
// becomes, and that nothing is left afterwards. The drop itself runs in a child process and
// needs root; skipped otherwise.
#include "privileges.hpp"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>

#include "img2vm/base/error.hpp"

using namespace img2vm::cli;

namespace {

// A field of /proc/self/status ("" when absent).
std::string status_field(const std::string& key) {
  std::ifstream in("/proc/self/status");
  for (std::string line; std::getline(in, line);)
    if (line.rfind(key + ":", 0) == 0) {
      std::string v = line.substr(key.size() + 1);
      v.erase(0, v.find_first_not_of(" \t"));
      return v;
    }
  return "";
}

// Runs `body` in a child; its exit code (0: every check passed), or 100+signal.
template <class F>
int in_child(F body) {
  pid_t pid = ::fork();
  if (pid == 0) ::_exit(body());
  int status = 0;
  ::waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 100 + WTERMSIG(status);
}

}  // namespace

TEST(Privileges, WhoTheVmmBecomes) {
  if (::geteuid() != 0) {
    RunAs self = unprivileged_identity();
    EXPECT_EQ(self.uid, ::getuid());
    EXPECT_EQ(self.gid, ::getgid());
    return;
  }
  int code = in_child([] {
    ::unsetenv("SUDO_UID");
    ::unsetenv("SUDO_GID");
    RunAs nobody = unprivileged_identity();
    if (nobody.uid != 65534 || nobody.gid != 65534) return 1;
    ::setenv("SUDO_UID", "1234", 1);
    ::setenv("SUDO_GID", "2345", 1);
    RunAs user = unprivileged_identity();
    if (user.uid != 1234 || user.gid != 2345) return 2;
    ::setenv("SUDO_UID", "0", 1);  // sudo from root: not a user to become
    if (unprivileged_identity().uid != 65534) return 3;
    ::setenv("SUDO_UID", "12x", 1);
    if (unprivileged_identity().uid != 65534) return 4;
    return 0;
  });
  EXPECT_EQ(code, 0);
}

TEST(Privileges, NothingIsLeftAfterTheDrop) {
  if (::geteuid() != 0) GTEST_SKIP() << "giving up root needs root";
  int code = in_child([] {
    ::prctl(PR_SET_PDEATHSIG, SIGUSR1);
    try {
      drop_privileges({4321, 4322});
    } catch (const img2vm::Error& e) {
      std::fprintf(stderr, "%s\n", e.what());
      return 1;
    }
    if (status_field("Uid") != "4321\t4321\t4321\t4321") return 2;
    if (status_field("Gid") != "4322\t4322\t4322\t4322") return 3;
    if (!status_field("Groups").empty()) return 4;
    for (const char* set : {"CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"})
      if (status_field(set) != "0000000000000000") return 5;
    if (status_field("NoNewPrivs") != "1") return 6;
    int pdeath = 0;
    if (::prctl(PR_GET_PDEATHSIG, &pdeath) != 0 || pdeath != SIGUSR1) return 7;  // kept
    if (::setuid(0) == 0) return 8;                                              // no way back
    return 0;
  });
  EXPECT_EQ(code, 0) << "1: the drop failed, 2-7: what was left (see the test), 8: root came back";
  // Never "to" root.
  EXPECT_EQ(in_child([] {
              try {
                drop_privileges({0, 0});
              } catch (const img2vm::Error&) {
                return 0;
              }
              return 1;
            }),
            0);
}
