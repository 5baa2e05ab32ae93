/* Runs a command as another user, for the "ordinary user with access to /dev/kvm" case, on the
 * host and in the nested rig's L1 (whose busybox has no way to change uid without /etc/passwd):
 *   runas UID GID CMD [ARG]...   no supplementary groups; exits 99 when the ids did not change
 */
#include <grp.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

int main(int argc, char** argv) {
  if (argc < 4) {
    fprintf(stderr, "usage: runas UID GID CMD [ARG]...\n");
    return 2;
  }
  uid_t uid = (uid_t)strtoul(argv[1], NULL, 10);
  gid_t gid = (gid_t)strtoul(argv[2], NULL, 10);
  if (setgroups(0, NULL) != 0 || setgid(gid) != 0 || setuid(uid) != 0) {
    perror("runas");
    return 99;
  }
  if (getuid() != uid || geteuid() != uid || getgid() != gid || setuid(0) == 0) {
    fprintf(stderr, "runas: still privileged\n");
    return 99;
  }
  execvp(argv[3], argv + 3);
  perror(argv[3]);
  return 127;
}
