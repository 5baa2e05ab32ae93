// bench/net's traffic program, compiled static at run time (gcc). The same binary is the guest's
// server (the image's CMD) and the host's clients; every client prints one JSON line on stdout.
//
//   netbench serve PORT                    guest: accept on 0.0.0.0:PORT; each connection's first
//                                          byte picks what it gets (see handle()); 'Q' ends it
//   netbench wait HOST PORT TIMEOUT_S      until the server answers a ping: {"ready_s":...}
//   netbench send HOST PORT SECONDS        host->guest bytes for SECONDS, then until the guest
//                                          has counted them all: {"mib_s":...,"bytes":...,"s":...}
//   netbench recv HOST PORT SECONDS        guest->host bytes for SECONDS: {"mib_s":...,...}
//   netbench echo HOST PORT COUNT SIZE     COUNT request/response round trips of SIZE bytes (after
//                                          COUNT/10 untimed): {"median_us":...,"p99_us":...,...}
//   netbench quit HOST PORT                asks the server to exit 0 (the VM then ends)
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

enum { kBuf = 128 << 10 };
static char buf[kBuf];

static void fail(const char* what) {
  fprintf(stderr, "netbench: %s: %s\n", what, strerror(errno));
  exit(1);
}

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int read_full(int fd, void* p, size_t n) {
  for (size_t got = 0; got < n;) {
    ssize_t r = read(fd, (char*)p + got, n - got);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return -1;
    got += (size_t)r;
  }
  return 0;
}

static int write_full(int fd, const void* p, size_t n) {
  for (size_t done = 0; done < n;) {
    ssize_t r = write(fd, (const char*)p + done, n - done);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return -1;
    done += (size_t)r;
  }
  return 0;
}

static void set_timeout(int fd, int seconds) {
  struct timeval tv = {seconds, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
}

static void nodelay(int fd) {
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

// One connection after its command byte: 'S' sink (count bytes until EOF, answer the count as
// 8 bytes), 'G' source (send until the peer goes), 'E' echo (a 4-byte size, then requests of
// that size echoed back until EOF), 'P' ping (answer 'p').
static void handle(int fd, char cmd) {
  if (cmd == 'S') {
    uint64_t total = 0;
    for (;;) {
      ssize_t r = read(fd, buf, kBuf);
      if (r < 0 && errno == EINTR) continue;
      if (r <= 0) break;
      total += (uint64_t)r;
    }
    write_full(fd, &total, sizeof total);
  } else if (cmd == 'G') {
    memset(buf, 'g', kBuf);
    while (write_full(fd, buf, kBuf) == 0) {
    }
  } else if (cmd == 'E') {
    uint32_t size;
    nodelay(fd);
    if (read_full(fd, &size, sizeof size) == 0 && size > 0 && size <= kBuf)
      while (read_full(fd, buf, size) == 0 && write_full(fd, buf, size) == 0) {
      }
  } else if (cmd == 'P') {
    write_full(fd, "p", 1);
  }
}

static int serve(int port) {
  signal(SIGPIPE, SIG_IGN);
  signal(SIGCHLD, SIG_IGN);  // no zombies
  int ls = socket(AF_INET, SOCK_STREAM, 0);
  if (ls < 0) fail("socket");
  int one = 1;
  setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  struct sockaddr_in a = {
      .sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = htonl(INADDR_ANY)};
  if (bind(ls, (struct sockaddr*)&a, sizeof a) < 0) fail("bind");
  if (listen(ls, 16) < 0) fail("listen");
  printf("netbench: listening on port %d\n", port);
  fflush(stdout);
  for (;;) {
    int fd = accept(ls, NULL, NULL);
    if (fd < 0) {
      if (errno == EINTR) continue;
      fail("accept");
    }
    // The command byte is read here, so that 'Q' can end the server; a silent peer (slirp
    // probing) is dropped after a while.
    char cmd = 0;
    set_timeout(fd, 10);
    if (read_full(fd, &cmd, 1) != 0) {
      close(fd);
      continue;
    }
    if (cmd == 'Q') {
      write_full(fd, "q", 1);
      close(fd);
      printf("netbench: quit\n");
      return 0;
    }
    pid_t pid = fork();
    if (pid == 0) {
      close(ls);
      set_timeout(fd, 0);
      handle(fd, cmd);
      _exit(0);
    }
    close(fd);
  }
}

static int dial(const char* host, int port) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) fail("socket");
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
  if (inet_pton(AF_INET, host, &a.sin_addr) != 1) {
    fprintf(stderr, "netbench: not an IPv4 address: %s\n", host);
    exit(2);
  }
  if (connect(fd, (struct sockaddr*)&a, sizeof a) < 0) {
    close(fd);
    return -1;
  }
  return fd;
}

static int dial_or_die(const char* host, int port, char cmd) {
  int fd = dial(host, port);
  if (fd < 0) fail("connect");
  if (write_full(fd, &cmd, 1) != 0) fail("write");
  return fd;
}

static int wait_ready(const char* host, int port, double timeout) {
  double t0 = now();
  int tries = 0;
  while (now() - t0 < timeout) {
    tries++;
    int fd = dial(host, port);
    if (fd >= 0) {
      char c = 0;
      set_timeout(fd, 5);
      int ok = write_full(fd, "P", 1) == 0 && read_full(fd, &c, 1) == 0 && c == 'p';
      close(fd);
      if (ok) {
        printf("{\"ready_s\":%.3f,\"tries\":%d}\n", now() - t0, tries);
        return 0;
      }
    }
    usleep(100 * 1000);
  }
  fprintf(stderr, "netbench: no answer from %s:%d after %.0f s\n", host, port, timeout);
  return 1;
}

static void print_rate(const char* dir, uint64_t bytes, double s) {
  printf("{\"dir\":\"%s\",\"bytes\":%llu,\"s\":%.3f,\"mib_s\":%.3f}\n", dir,
         (unsigned long long)bytes, s, bytes / s / 1048576.0);
}

static int send_stream(const char* host, int port, double seconds) {
  memset(buf, 's', kBuf);
  double t0 = now();
  int fd = dial_or_die(host, port, 'S');
  uint64_t sent = 0, counted = 0;
  while (now() - t0 < seconds) {
    if (write_full(fd, buf, kBuf) != 0) fail("write");
    sent += kBuf;
  }
  shutdown(fd, SHUT_WR);
  if (read_full(fd, &counted, sizeof counted) != 0) fail("reading the guest's count");
  double s = now() - t0;
  close(fd);
  if (counted != sent) {
    fprintf(stderr, "netbench: sent %llu bytes, the guest counted %llu\n", (unsigned long long)sent,
            (unsigned long long)counted);
    return 1;
  }
  print_rate("host_to_guest", counted, s);
  return 0;
}

static int recv_stream(const char* host, int port, double seconds) {
  double t0 = now();
  int fd = dial_or_die(host, port, 'G');
  uint64_t got = 0;
  while (now() - t0 < seconds) {
    ssize_t r = read(fd, buf, kBuf);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) fail("read");
    got += (uint64_t)r;
  }
  double s = now() - t0;
  close(fd);
  print_rate("guest_to_host", got, s);
  return 0;
}

static int cmp_double(const void* a, const void* b) {
  double x = *(const double*)a, y = *(const double*)b;
  return x < y ? -1 : x > y;
}

static int echo(const char* host, int port, int count, uint32_t size) {
  if (count < 1 || size < 1 || size > kBuf) {
    fprintf(stderr, "netbench: echo: COUNT >= 1, 1 <= SIZE <= %d\n", kBuf);
    return 2;
  }
  int fd = dial_or_die(host, port, 'E');
  nodelay(fd);
  if (write_full(fd, &size, sizeof size) != 0) fail("write");
  double* us = calloc((size_t)count, sizeof *us);
  memset(buf, 'e', size);
  int warm = count / 10;
  for (int i = -warm; i < count; i++) {
    double t = now();
    if (write_full(fd, buf, size) != 0 || read_full(fd, buf, size) != 0) fail("echo round trip");
    if (i >= 0) us[i] = (now() - t) * 1e6;
  }
  close(fd);
  double sum = 0;
  for (int i = 0; i < count; i++) sum += us[i];
  qsort(us, (size_t)count, sizeof *us, cmp_double);
  printf(
      "{\"count\":%d,\"size\":%u,\"median_us\":%.1f,\"p99_us\":%.1f,\"min_us\":%.1f,\"max_us\":%."
      "1f,"
      "\"mean_us\":%.1f}\n",
      count, size, us[count / 2], us[(int)(count * 0.99)], us[0], us[count - 1], sum / count);
  free(us);
  return 0;
}

static int quit(const char* host, int port) {
  int fd = dial_or_die(host, port, 'Q');
  char c = 0;
  set_timeout(fd, 30);
  if (read_full(fd, &c, 1) != 0 || c != 'q') fail("quit: no answer");
  close(fd);
  return 0;
}

int main(int argc, char** argv) {
  const char* m = argc > 1 ? argv[1] : "";
  signal(SIGPIPE, SIG_IGN);
  if (!strcmp(m, "serve") && argc == 3) return serve(atoi(argv[2]));
  if (!strcmp(m, "wait") && argc == 5) return wait_ready(argv[2], atoi(argv[3]), atof(argv[4]));
  if (!strcmp(m, "send") && argc == 5) return send_stream(argv[2], atoi(argv[3]), atof(argv[4]));
  if (!strcmp(m, "recv") && argc == 5) return recv_stream(argv[2], atoi(argv[3]), atof(argv[4]));
  if (!strcmp(m, "echo") && argc == 6)
    return echo(argv[2], atoi(argv[3]), atoi(argv[4]), (uint32_t)atoi(argv[5]));
  if (!strcmp(m, "quit") && argc == 4) return quit(argv[2], atoi(argv[3]));
  fprintf(stderr,
          "usage: netbench serve PORT | wait HOST PORT TIMEOUT_S | send HOST PORT SECONDS |\n"
          "       recv HOST PORT SECONDS | echo HOST PORT COUNT SIZE | quit HOST PORT\n");
  return 2;
}
