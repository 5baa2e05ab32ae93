// process.terminal for img2vm-oci: the pty whose master goes to the engine's --console-socket
// and whose slave is the VM monitor's stdin, stdout and stderr.
#include <fcntl.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <termios.h>
#include <unistd.h>

#include <cstring>

#include "img2vm/base/error.hpp"
#include "img2vm/runtime/oci_runtime.hpp"

namespace img2vm::runtime {

ConsolePty open_console_pty() {
  ConsolePty p;
  p.master = UniqueFd(::posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC));
  if (!p.master) throw_errno("process.terminal: cannot open a pty (posix_openpt)");
  if (::grantpt(p.master.get()) != 0 || ::unlockpt(p.master.get()) != 0)
    throw_errno("process.terminal: cannot unlock the pty");
  char name[128];
  if (::ptsname_r(p.master.get(), name, sizeof name) != 0)
    throw_errno("process.terminal: cannot name the pty (ptsname)");
  p.name = name;
  p.slave = UniqueFd(::open(name, O_RDWR | O_NOCTTY | O_CLOEXEC));
  if (!p.slave) throw_errno("process.terminal: cannot open " + p.name);
  // The guest's tty does the line discipline (echo, ^C, CR/NL); the host's passes bytes through.
  struct termios t {};
  if (::tcgetattr(p.slave.get(), &t) != 0) throw_errno("process.terminal: " + p.name);
  ::cfmakeraw(&t);
  if (::tcsetattr(p.slave.get(), TCSANOW, &t) != 0) throw_errno("process.terminal: " + p.name);
  return p;
}

void send_console_master(const std::filesystem::path& socket_path, const ConsolePty& pty) {
  const std::string where = "--console-socket " + socket_path.string();
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  const std::string s = socket_path.string();
  if (s.empty() || s.size() >= sizeof addr.sun_path)
    throw Error(ErrorKind::kInvalidArgument,
                where + ": not a unix socket path (empty or too long)");
  std::memcpy(addr.sun_path, s.data(), s.size());
  UniqueFd sock(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!sock) throw_errno(where + ": socket");
  int r;
  while ((r = ::connect(sock.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof addr)) != 0 &&
         errno == EINTR) {
  }
  if (r != 0) throw_errno(where + ": connect");
  // One message: the pty's name as its data, the master as its one descriptor.
  std::string name = pty.name;
  iovec iov{name.data(), name.size()};
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))] = {};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof control;
  cmsghdr* c = CMSG_FIRSTHDR(&msg);
  c->cmsg_level = SOL_SOCKET;
  c->cmsg_type = SCM_RIGHTS;
  c->cmsg_len = CMSG_LEN(sizeof(int));
  const int fd = pty.master.get();
  std::memcpy(CMSG_DATA(c), &fd, sizeof fd);
  ssize_t n;
  while ((n = ::sendmsg(sock.get(), &msg, MSG_NOSIGNAL)) < 0 && errno == EINTR) {
  }
  if (n < 0) throw_errno(where + ": sending the terminal");
}

}  // namespace img2vm::runtime
