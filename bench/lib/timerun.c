// timerun: runs a command and prints one JSON line with its wall time, the time its stdout first
// contained MARKER, and its peak RSS (ru_maxrss of the child from wait4). bench/boot uses it on
// the host and inside the nested rig's L1 guest, where there is no Python; it is built static.
//
//   timerun MARKER STDOUT_FILE STDERR_FILE CMD [ARG]...
//
// The child's stdin is /dev/null, its stdout goes through a pipe (scanned for MARKER, copied to
// STDOUT_FILE), its stderr to STDERR_FILE. Output:
//   {"rc":0,"wall_ms":12.3,"marker_ms":10.1,"maxrss_kib":4321,"user_ms":1.0,"sys_ms":2.0}
// marker_ms is -1 when the marker never appeared (MARKER "-" looks for none); rc is 128+N when
// signal N killed the child. timerun itself is tiny and static, so the child's ru_maxrss (which
// counts the forked copy before exec) is the measured program's own, give or take ~1 MiB.
//
// With TIMERUN_GUEST_MIB=N in the environment (a VMM whose guest RAM is one N MiB mapping),
// timerun reads /proc/PID/smaps once, the moment the marker appears, and adds
//   "rss_at_marker_kib": the process's total Rss then, "guest_rss_kib": the Rss of the guest-RAM
//   mapping then; the difference is the VMM's own memory (heap, stacks, code and libraries), and
//   "anon_kib" the anonymous part of it (heap, stacks: what each further VM would cost; code and
//   libraries are shared), and "hwm_at_marker_kib": VmHWM then, the peak Rss of the program
//   running at the marker since its exec (ru_maxrss also covers what the process ran before an
//   exec: `img2vm run` execs its VMM, img2vm-vmm).
// With TIMERUN_SMAPS_DUMP=FILE that smaps text is also written to FILE, to see what it was.
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

// A "Key:   N kB" line of /proc/PID/status, in KiB; -1 when absent.
static long status_kib(pid_t pid, const char* key) {
  static char buf[65536];
  char path[64];
  snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return -1;
  size_t len = 0;
  for (ssize_t n; len < sizeof buf - 1 && (n = read(fd, buf + len, sizeof buf - 1 - len)) > 0;)
    len += (size_t)n;
  close(fd);
  buf[len] = 0;
  char* at = strstr(buf, key);
  return at ? strtol(at + strlen(key), NULL, 10) : -1;
}

// Reads /proc/PID/smaps into `smaps`: total Rss and the Rss of mappings sized like the guest RAM
// (size to size + 8 MiB: a VMM may add a guard page or alignment). 0 if the process is gone.
static char smaps[1 << 20];
static int sample(pid_t pid, unsigned long guest_kib, long* total, long* guest, long* anon) {
  char path[64];
  snprintf(path, sizeof path, "/proc/%d/smaps", (int)pid);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 0;
  size_t len = 0;
  for (ssize_t n;
       len < sizeof smaps - 1 && (n = read(fd, smaps + len, sizeof smaps - 1 - len)) > 0;)
    len += (size_t)n;
  close(fd);
  smaps[len] = 0;
  *total = *guest = *anon = 0;
  int in_guest = 0;
  for (char* line = smaps; line && *line;
       line = strchr(line, '\n') ? strchr(line, '\n') + 1 : NULL) {
    unsigned long lo, hi;
    long kib;
    if (sscanf(line, "%lx-%lx ", &lo, &hi) == 2 && line[strcspn(line, " ")] == ' ' &&
        strchr(line, '-') < strchr(line, ' ')) {
      unsigned long size_kib = (hi - lo) / 1024;
      in_guest = size_kib >= guest_kib && size_kib <= guest_kib + 8192;
    } else if (sscanf(line, "Rss: %ld kB", &kib) == 1) {
      *total += kib;
      if (in_guest) *guest += kib;
    } else if (sscanf(line, "Anonymous: %ld kB", &kib) == 1 && !in_guest) {
      *anon += kib;
    }
  }
  return *total > 0;
}

static double tv_ms(struct timeval tv) { return tv.tv_sec * 1e3 + tv.tv_usec / 1e3; }

int main(int argc, char** argv) {
  if (argc < 5) {
    fprintf(stderr, "usage: timerun MARKER STDOUT_FILE STDERR_FILE CMD [ARG]...\n");
    return 2;
  }
  const char* marker = argv[1];
  size_t mlen = strlen(marker);
  if (mlen == 0 || mlen > 256) {
    fprintf(stderr, "timerun: MARKER must be 1-256 bytes\n");
    return 2;
  }
  int out = open(argv[2], O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  int err = open(argv[3], O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  int null = open("/dev/null", O_RDONLY | O_CLOEXEC);
  int p[2];
  if (out < 0 || err < 0 || null < 0 || pipe2(p, O_CLOEXEC) != 0) {
    perror("timerun");
    return 2;
  }
  double t0 = now_ms();
  pid_t pid = fork();
  if (pid < 0) {
    perror("timerun: fork");
    return 2;
  }
  if (pid == 0) {
    dup2(null, 0);
    dup2(p[1], 1);
    dup2(err, 2);
    execvp(argv[4], argv + 4);
    perror("timerun: exec");
    _exit(127);
  }
  close(p[1]);
  double marker_ms = -1;
  if (strcmp(marker, "-") == 0) marker_ms = -2;  // not looking
  // The search window keeps the last mlen-1 bytes of earlier reads: a marker split between two
  // reads is still found.
  static char rbuf[65536], win[65536 + 256];
  size_t tlen = 0;
  const char* g = getenv("TIMERUN_GUEST_MIB");
  unsigned long guest_kib = g ? strtoul(g, NULL, 10) * 1024 : 0;
  long total = -1, guest = -1, anon = -1, hwm = -1;
  for (;;) {
    ssize_t n = read(p[0], rbuf, sizeof rbuf);
    if (n <= 0) break;
    if (marker_ms == -1) {
      memcpy(win + tlen, rbuf, (size_t)n);
      size_t len = tlen + (size_t)n;
      if (memmem(win, len, marker, mlen)) {
        marker_ms = now_ms() - t0;
        const char* dump = getenv("TIMERUN_SMAPS_DUMP");
        FILE* f;
        if (guest_kib && sample(pid, guest_kib, &total, &guest, &anon) && dump &&
            (f = fopen(dump, "we")))
          fputs(smaps, f), fclose(f);
        if (guest_kib) hwm = status_kib(pid, "VmHWM:");
      } else {
        tlen = len < mlen - 1 ? len : mlen - 1;
        memmove(win, win + len - tlen, tlen);
      }
    }
    if (write(out, rbuf, (size_t)n) != n) perror("timerun: write");
  }
  int status;
  struct rusage ru;
  if (wait4(pid, &status, 0, &ru) < 0) {
    perror("timerun: wait4");
    return 2;
  }
  double wall = now_ms() - t0;
  if (marker_ms == -2) marker_ms = -1;
  int rc = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  printf(
      "{\"rc\":%d,\"wall_ms\":%.3f,\"marker_ms\":%.3f,\"maxrss_kib\":%ld,\"user_ms\":%.3f,\"sys_"
      "ms\":%.3f",
      rc, wall, marker_ms, ru.ru_maxrss, tv_ms(ru.ru_utime), tv_ms(ru.ru_stime));
  if (guest_kib)
    printf(
        ",\"rss_at_marker_kib\":%ld,\"guest_rss_kib\":%ld,\"anon_kib\":%ld,\"hwm_at_marker_kib\":%"
        "ld",
        total, guest, anon, hwm);
  printf("}\n");
  return 0;
}
