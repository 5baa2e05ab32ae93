// The host terminal for -t (run and exec): raw mode while the guest has it, and its size.
#pragma once

#include <sys/ioctl.h>
#include <termios.h>

#include <cstdint>
#include <optional>
#include <utility>

#include "img2vm/base/error.hpp"

namespace img2vm::cli {

// The terminal `fd` in raw mode, restored on every way out.
class RawTerminal {
 public:
  explicit RawTerminal(int fd) : fd_(fd) {
    if (::tcgetattr(fd_, &saved_) != 0) throw_errno("cannot read the terminal settings of stdin");
    struct termios raw = saved_;
    ::cfmakeraw(&raw);
    if (::tcsetattr(fd_, TCSANOW, &raw) != 0) throw_errno("cannot put stdin in raw mode");
  }
  ~RawTerminal() { ::tcsetattr(fd_, TCSANOW, &saved_); }
  RawTerminal(const RawTerminal&) = delete;
  RawTerminal& operator=(const RawTerminal&) = delete;

 private:
  int fd_;
  struct termios saved_ {};
};

// The size (rows, columns) of the terminal `fd`, when it is one and knows it.
inline std::optional<std::pair<uint16_t, uint16_t>> window_size(int fd) {
  struct winsize ws {};
  if (::ioctl(fd, TIOCGWINSZ, &ws) != 0 || ws.ws_row == 0 || ws.ws_col == 0) return std::nullopt;
  return std::make_pair(uint16_t(ws.ws_row), uint16_t(ws.ws_col));
}

}  // namespace img2vm::cli
