/* reaper REPORT CMD [ARG]...: stands for conmon or containerd's shim around an OCI runtime.
 * It becomes a child subreaper, runs CMD (the runtime's create), and writes to REPORT one line
 * for every process it reaps: "exited PID STATUS" (or "signaled PID SIGNAL"), the first being
 * CMD's. It ends once no child is left: the daemon CMD left behind (whose pid the runtime wrote
 * to its --pid-file) is reaped here when it ends, as conmon reaps it. */
#include <errno.h>
#include <stdio.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

int main(int argc, char** argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: reaper REPORT CMD [ARG]...\n");
    return 2;
  }
  if (prctl(PR_SET_CHILD_SUBREAPER, 1) != 0) {
    perror("reaper: PR_SET_CHILD_SUBREAPER");
    return 2;
  }
  pid_t child = fork();
  if (child < 0) {
    perror("reaper: fork");
    return 2;
  }
  if (child == 0) {
    execvp(argv[2], argv + 2);
    perror("reaper: exec");
    _exit(127);
  }
  for (;;) {
    int st = 0;
    pid_t p = waitpid(-1, &st, 0);
    if (p < 0) {
      if (errno == EINTR) continue;
      break;
    }
    FILE* f = fopen(argv[1], "a");
    if (!f) return 2;
    if (WIFEXITED(st))
      fprintf(f, "exited %d %d\n", (int)p, WEXITSTATUS(st));
    else
      fprintf(f, "signaled %d %d\n", (int)p, WTERMSIG(st));
    fclose(f);
  }
  return 0;
}
