/* console SOCKET IN OUT CMD [ARG]...: stands for conmon's side of an OCI runtime's
 * --console-socket. It listens on the unix socket SOCKET, runs CMD (the runtime's create, which
 * connects there), receives the terminal's master (one message, SCM_RIGHTS) and says on stderr
 * what it got: "console: NAME pty=yes|no" (the message's data, and whether the descriptor is a
 * pty master: ptsname answers). Then it copies what the terminal writes to the file OUT, and
 * each line read from IN (a fifo, opened read-write so it never ends) to the terminal; a line
 * "@size ROWS COLS" sets the terminal's window size instead (TIOCSWINSZ, as an engine does). It
 * ends when the terminal hangs up (every slave closed). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <termios.h>
#include <unistd.h>

static int fail(const char* what) {
  fprintf(stderr, "console: %s: %s\n", what, strerror(errno));
  return 2;
}

static int write_all(int fd, const char* p, size_t n) {
  while (n > 0) {
    ssize_t w = write(fd, p, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return -1;
    p += w;
    n -= (size_t)w;
  }
  return 0;
}

int main(int argc, char** argv) {
  if (argc < 5) {
    fprintf(stderr, "usage: console SOCKET IN OUT CMD [ARG]...\n");
    return 2;
  }
  int ls = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  struct sockaddr_un addr;
  memset(&addr, 0, sizeof addr);
  addr.sun_family = AF_UNIX;
  if (strlen(argv[1]) >= sizeof addr.sun_path) return fail("socket path too long");
  strcpy(addr.sun_path, argv[1]);
  if (ls < 0 || bind(ls, (struct sockaddr*)&addr, sizeof addr) != 0 || listen(ls, 1) != 0)
    return fail(argv[1]);
  int in = open(argv[2], O_RDWR | O_CLOEXEC);
  if (in < 0) return fail(argv[2]);
  int out = open(argv[3], O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (out < 0) return fail(argv[3]);
  pid_t child = fork();
  if (child < 0) return fail("fork");
  if (child == 0) {
    execvp(argv[4], argv + 4);
    perror("console: exec");
    _exit(127);
  }
  int conn = accept4(ls, NULL, NULL, SOCK_CLOEXEC);
  if (conn < 0) return fail("accept");
  char name[256] = {0};
  struct iovec iov = {name, sizeof name - 1};
  union {
    struct cmsghdr align;
    char buf[CMSG_SPACE(sizeof(int))];
  } control;
  memset(&control, 0, sizeof control);
  struct msghdr msg;
  memset(&msg, 0, sizeof msg);
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control.buf;
  msg.msg_controllen = sizeof control.buf;
  ssize_t got = recvmsg(conn, &msg, MSG_CMSG_CLOEXEC);
  if (got < 0) return fail("recvmsg");
  struct cmsghdr* c = CMSG_FIRSTHDR(&msg);
  if (!c || c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) {
    fprintf(stderr, "console: no descriptor in the message\n");
    return 2;
  }
  int master;
  memcpy(&master, CMSG_DATA(c), sizeof master);
  close(conn);
  char pts[128];
  fprintf(stderr, "console: %s pty=%s\n", name,
          ptsname_r(master, pts, sizeof pts) == 0 && isatty(master) ? "yes" : "no");

  char line[4096];
  size_t have = 0;
  for (;;) {
    struct pollfd pf[2] = {{master, POLLIN, 0}, {in, POLLIN, 0}};
    if (poll(pf, 2, -1) < 0) {
      if (errno == EINTR) continue;
      return fail("poll");
    }
    if (pf[0].revents) {
      char buf[4096];
      ssize_t n = read(master, buf, sizeof buf);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) break; /* EIO: hung up */
      if (write_all(out, buf, (size_t)n) != 0) return fail(argv[3]);
    }
    if (pf[1].revents) {
      ssize_t n = read(in, line + have, sizeof line - 1 - have);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return fail(argv[2]);
      have += (size_t)n;
      char* nl;
      while ((nl = memchr(line, '\n', have)) != NULL) {
        size_t len = (size_t)(nl - line) + 1;
        unsigned rows, cols;
        if (sscanf(line, "@size %u %u", &rows, &cols) == 2) {
          struct winsize ws;
          memset(&ws, 0, sizeof ws);
          ws.ws_row = (unsigned short)rows;
          ws.ws_col = (unsigned short)cols;
          if (ioctl(master, TIOCSWINSZ, &ws) != 0) return fail("TIOCSWINSZ");
        } else if (write_all(master, line, len) != 0) {
          return fail("writing to the terminal");
        }
        memmove(line, line + len, have - len);
        have -= len;
      }
      if (have == sizeof line - 1) have = 0;
    }
  }
  fprintf(stderr, "console: the terminal hung up\n");
  return 0;
}
