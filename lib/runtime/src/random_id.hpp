// 64 lowercase hex digits from getrandom(2): the ids of VMs and of anonymous volumes.
#pragma once

#include <sys/random.h>

#include <cerrno>
#include <string>

#include "img2vm/base/error.hpp"

namespace img2vm::runtime::detail {

inline std::string random_id() {
  unsigned char b[32];
  size_t got = 0;
  while (got < sizeof b) {
    ssize_t n = ::getrandom(b + got, sizeof b - got, 0);
    if (n < 0 && errno != EINTR) throw_errno("getrandom");
    if (n > 0) got += static_cast<size_t>(n);
  }
  static const char* hex = "0123456789abcdef";
  std::string s;
  for (unsigned char c : b) s += {hex[c >> 4], hex[c & 15]};
  return s;
}

}  // namespace img2vm::runtime::detail
