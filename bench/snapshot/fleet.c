// fleet: starts N copies of one command at once, waits until every copy has printed MARKER on
// its stdout, then reads each one's memory (/proc/PID/smaps_rollup and /proc/PID/smaps) while
// all N are alive, stops them with SIGTERM and reaps them. bench/snapshot uses it inside the
// nested rig's L1 guest (no Python there) to sum the PSS of 10 VMMs; it is built static.
//
//   fleet MARKER N GUEST_MIB TIMEOUT_S OUTDIR CMD [ARG]...
//
// Copy i (0-based) gets /dev/null as stdin, a pipe as stdout (scanned for MARKER, copied to
// OUTDIR/i.out) and OUTDIR/i.err as stderr. Output, one JSON line:
//   {"ok":true,"all_marked_ms":..,"vms":[{"pid":..,"exe":"img2vm-vmm","marker_ms":..,
//     "pss_kib":..,"rss_kib":..,"pss_anon_kib":..,"pss_file_kib":..,"pss_shmem_kib":..,
//     "anon_huge_kib":..,"guest_pss_kib":..,"guest_rss_kib":..,"minflt":..,"rc":..},...]}
// pss_* and anon_huge (AnonHugePages) come from smaps_rollup, minflt (minor page faults so far)
// from /proc/PID/stat; guest_* are the Pss and Rss of the mappings sized like the
// guest RAM (GUEST_MIB to GUEST_MIB + 8 MiB) from smaps. "ok" is false (and the reason in
// "error") when a copy ended before its marker or TIMEOUT_S passed first; every copy is then
// killed. After the reading each copy gets SIGTERM; one still running TIMEOUT_S later gets
// SIGKILL. rc is the copy's exit status (128+N for signal N).
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

enum { kMax = 64 };

struct vm {
  pid_t pid;
  int pipe;  // read end, -1 once at EOF
  int out;   // OUTDIR/i.out
  double marker_ms;
  char win[512];  // the last bytes read, for a marker split between reads
  size_t wlen;
  long pss, rss, pss_anon, pss_file, pss_shmem, anon_huge, guest_pss, guest_rss, minflt;
  char exe[256];
  int rc;
  int reaped;
};

static double now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static char text[1 << 20];

// Reads /proc/PID/NAME into `text`; its length, 0 when unreadable.
static size_t read_proc(pid_t pid, const char* name) {
  char path[64];
  snprintf(path, sizeof path, "/proc/%d/%s", (int)pid, name);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 0;
  size_t len = 0;
  for (ssize_t n; len < sizeof text - 1 && (n = read(fd, text + len, sizeof text - 1 - len)) > 0;)
    len += (size_t)n;
  close(fd);
  text[len] = 0;
  return len;
}

// A "Key: N kB" line's N from `text`; -1 when absent.
static long field_kib(const char* key) {
  size_t klen = strlen(key);
  for (const char* line = text; line && *line;
       line = strchr(line, '\n') ? strchr(line, '\n') + 1 : NULL)
    if (strncmp(line, key, klen) == 0 && line[klen] == ':')
      return strtol(line + klen + 1, NULL, 10);
  return -1;
}

static void sample(struct vm* v, unsigned long guest_kib) {
  char path[64];
  snprintf(path, sizeof path, "/proc/%d/exe", (int)v->pid);
  ssize_t n = readlink(path, v->exe, sizeof v->exe - 1);
  v->exe[n > 0 ? n : 0] = 0;
  char* slash = strrchr(v->exe, '/');
  if (slash) memmove(v->exe, slash + 1, strlen(slash));
  v->pss = v->rss = v->pss_anon = v->pss_file = v->pss_shmem = v->anon_huge = -1;
  if (read_proc(v->pid, "smaps_rollup")) {
    v->pss = field_kib("Pss");
    v->rss = field_kib("Rss");
    v->pss_anon = field_kib("Pss_Anon");
    v->pss_file = field_kib("Pss_File");
    v->pss_shmem = field_kib("Pss_Shmem");
    v->anon_huge = field_kib("AnonHugePages");
  }
  // Minor page faults so far: field 10 of /proc/PID/stat, after the command's ")".
  v->minflt = -1;
  if (read_proc(v->pid, "stat") && strrchr(text, ')')) {
    char* f = strrchr(text, ')') + 1;
    for (int i = 0; i < 7 && f; i++) f = strchr(f + 1, ' ');
    if (f) v->minflt = strtol(f + 1, NULL, 10);
  }
  v->guest_pss = v->guest_rss = 0;
  if (!read_proc(v->pid, "smaps")) return;
  int in_guest = 0;
  for (char* line = text; line && *line;
       line = strchr(line, '\n') ? strchr(line, '\n') + 1 : NULL) {
    unsigned long lo, hi;
    long kib;
    char* sp = strchr(line, ' ');
    char* dash = strchr(line, '-');
    if (sp && dash && dash < sp && sscanf(line, "%lx-%lx ", &lo, &hi) == 2) {
      unsigned long size_kib = (hi - lo) / 1024;
      in_guest = size_kib >= guest_kib && size_kib <= guest_kib + 8192;
    } else if (in_guest && sscanf(line, "Pss: %ld kB", &kib) == 1) {
      v->guest_pss += kib;
    } else if (in_guest && sscanf(line, "Rss: %ld kB", &kib) == 1) {
      v->guest_rss += kib;
    }
  }
}

// Reads what copy v wrote; notes the marker's time. 0 at EOF.
static int drain(struct vm* v, const char* marker, double t0) {
  char buf[65536];
  ssize_t n = read(v->pipe, buf, sizeof buf);
  if (n < 0 && (errno == EINTR || errno == EAGAIN)) return 1;
  if (n <= 0) {
    close(v->pipe);
    v->pipe = -1;
    return 0;
  }
  if (write(v->out, buf, (size_t)n) != n) perror("fleet: write");
  size_t mlen = strlen(marker);
  if (v->marker_ms < 0) {
    // Search the kept tail and this read (bounded: the marker is at most 256 bytes).
    for (ssize_t off = 0; off < n && v->marker_ms < 0;) {
      size_t take =
          (size_t)(n - off) < sizeof v->win - v->wlen ? (size_t)(n - off) : sizeof v->win - v->wlen;
      memcpy(v->win + v->wlen, buf + off, take);
      v->wlen += take;
      off += (ssize_t)take;
      if (memmem(v->win, v->wlen, marker, mlen)) {
        v->marker_ms = now_ms() - t0;
      } else if (v->wlen >= mlen) {
        memmove(v->win, v->win + v->wlen - (mlen - 1), mlen - 1);
        v->wlen = mlen - 1;
      }
    }
  }
  return 1;
}

// Polls every open pipe once for up to `ms`.
static void pump(struct vm* vms, int n, const char* marker, double t0, int ms) {
  struct pollfd pf[kMax];
  int idx[kMax], k = 0;
  for (int i = 0; i < n; i++)
    if (vms[i].pipe >= 0) pf[k] = (struct pollfd){vms[i].pipe, POLLIN, 0}, idx[k++] = i;
  if (k == 0) return;
  if (poll(pf, (nfds_t)k, ms) <= 0) return;
  for (int j = 0; j < k; j++)
    if (pf[j].revents) drain(&vms[idx[j]], marker, t0);
}

static void reap(struct vm* v, int flags) {
  int status;
  if (v->reaped) return;
  pid_t r = waitpid(v->pid, &status, flags);
  if (r == v->pid) {
    v->reaped = 1;
    v->rc = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  }
}

// Sends SIGTERM to every copy (SIGKILL with kill_now), then waits for them all: their stdout
// drained to EOF, then reaped; SIGKILL to any left after timeout_s.
static void stop_all(struct vm* vms, int n, const char* marker, double t0, int timeout_s,
                     int kill_now) {
  for (int i = 0; i < n; i++) kill(vms[i].pid, kill_now ? SIGKILL : SIGTERM);
  double deadline = now_ms() + timeout_s * 1e3;
  int killed = kill_now;
  for (;;) {
    int open = 0;
    for (int i = 0; i < n; i++) open += vms[i].pipe >= 0;
    if (!open) break;
    if (!killed && now_ms() > deadline) {
      for (int i = 0; i < n; i++) kill(vms[i].pid, SIGKILL);
      killed = 1;
    }
    pump(vms, n, marker, t0, 200);
  }
  for (int i = 0; i < n; i++) reap(&vms[i], 0);
}

static void print(struct vm* vms, int n, int ok, const char* error, double all_ms) {
  printf("{\"ok\":%s,", ok ? "true" : "false");
  if (error) printf("\"error\":\"%s\",", error);
  printf("\"all_marked_ms\":%.3f,\"vms\":[", all_ms);
  for (int i = 0; i < n; i++) {
    struct vm* v = &vms[i];
    printf(
        "%s{\"pid\":%d,\"exe\":\"%s\",\"marker_ms\":%.3f,\"pss_kib\":%ld,\"rss_kib\":%ld,"
        "\"pss_anon_kib\":%ld,\"pss_file_kib\":%ld,\"pss_shmem_kib\":%ld,\"anon_huge_kib\":%ld,"
        "\"guest_pss_kib\":%ld,\"guest_rss_kib\":%ld,\"minflt\":%ld,\"rc\":%d}",
        i ? "," : "", (int)v->pid, v->exe, v->marker_ms, v->pss, v->rss, v->pss_anon, v->pss_file,
        v->pss_shmem, v->anon_huge, v->guest_pss, v->guest_rss, v->minflt, v->rc);
  }
  printf("]}\n");
}

int main(int argc, char** argv) {
  if (argc < 7) {
    fprintf(stderr, "usage: fleet MARKER N GUEST_MIB TIMEOUT_S OUTDIR CMD [ARG]...\n");
    return 2;
  }
  const char* marker = argv[1];
  int n = atoi(argv[2]);
  unsigned long guest_kib = strtoul(argv[3], NULL, 10) * 1024;
  int timeout_s = atoi(argv[4]);
  const char* dir = argv[5];
  if (strlen(marker) == 0 || strlen(marker) > 256 || n < 1 || n > kMax || timeout_s < 1) {
    fprintf(stderr, "fleet: MARKER must be 1-256 bytes, N 1-%d, TIMEOUT_S positive\n", kMax);
    return 2;
  }
  signal(SIGPIPE, SIG_IGN);
  int null = open("/dev/null", O_RDONLY | O_CLOEXEC);
  if (null < 0) return perror("fleet: /dev/null"), 2;
  static struct vm vms[kMax];
  double t0 = now_ms();
  for (int i = 0; i < n; i++) {
    struct vm* v = &vms[i];
    char path[4096];
    int p[2];
    snprintf(path, sizeof path, "%s/%d.out", dir, i);
    v->out = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    snprintf(path, sizeof path, "%s/%d.err", dir, i);
    int err = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (v->out < 0 || err < 0 || pipe2(p, O_CLOEXEC) != 0) return perror("fleet"), 2;
    v->marker_ms = -1;
    v->rc = -1;
    v->pid = fork();
    if (v->pid < 0) return perror("fleet: fork"), 2;
    if (v->pid == 0) {
      dup2(null, 0);
      dup2(p[1], 1);
      dup2(err, 2);
      execvp(argv[6], argv + 6);
      perror("fleet: exec");
      _exit(127);
    }
    close(p[1]);
    close(err);
    v->pipe = p[0];
  }
  double deadline = t0 + timeout_s * 1e3;
  const char* error = NULL;
  for (;;) {
    int waiting = 0;
    for (int i = 0; i < n; i++) {
      if (vms[i].marker_ms >= 0) continue;
      waiting++;
      if (vms[i].pipe < 0) error = "a copy ended before its marker";
    }
    if (!waiting || error) break;
    if (now_ms() > deadline) {
      error = "timeout before every marker";
      break;
    }
    pump(vms, n, marker, t0, 200);
  }
  double all_ms = now_ms() - t0;
  if (!error)
    for (int i = 0; i < n; i++) sample(&vms[i], guest_kib);
  stop_all(vms, n, marker, t0, timeout_s, error != NULL);
  print(vms, n, !error, error, all_ms);
  return 0;
}
