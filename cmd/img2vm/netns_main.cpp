// img2vm-netns: puts a container engine's network namespace back once a detached VM that had its
// interface has ended (vm::restore_netns). A program of its own, which a detached VM's monitor
// (img2vm-vmm --monitor) runs, so that the VMM program does not load libnl:
//
//   img2vm-netns restore [STATE]   STATE: vm::NetnsTap::restore_state()'s text; without it, the
//                                  text is read from stdin
//
// Exit code: 0 when the namespace is restored (or there was nothing to do), 1 with one line on
// stderr when it is not, 2 on a usage error.
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <string>
#include <string_view>

#include "img2vm/vm/net_netns.hpp"

namespace {

constexpr size_t kMaxState = 1 << 20;  // a restore state is a few hundred bytes

// Reads stdin to its end; false when it cannot be read or is over kMaxState.
bool read_stdin(std::string& out) {
  char buf[4096];
  for (;;) {
    ssize_t n = ::read(STDIN_FILENO, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return false;
    if (n == 0) return true;
    if (out.size() + size_t(n) > kMaxState) return false;
    out.append(buf, size_t(n));
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || argc > 3 || std::string_view(argv[1]) != "restore") {
    std::fputs("usage: img2vm-netns restore [STATE]\n", stderr);
    return 2;
  }
  std::string state;
  if (argc == 3) {
    state = argv[2];
  } else if (!read_stdin(state)) {
    std::fputs("img2vm-netns: cannot read the restore state from stdin\n", stderr);
    return 1;
  }
  const std::string err = img2vm::vm::restore_netns(state);
  if (!err.empty()) {
    std::fprintf(stderr, "img2vm-netns: %s\n", err.c_str());
    return 1;
  }
  return 0;
}
