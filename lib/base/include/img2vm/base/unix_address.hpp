// Unix socket addresses for paths of any length. sockaddr_un holds at most 107 bytes of path;
// a longer path (a VM directory deep in a store) is reached through its directory instead:
// the directory is opened O_PATH and the address becomes /proc/self/fd/N/NAME, which bind and
// connect resolve like the real path. Only the file name must fit (about 90 bytes).
#pragma once

#include <sys/socket.h>
#include <sys/types.h>
#include <sys/un.h>

#include <filesystem>

#include "img2vm/base/fd.hpp"

namespace img2vm {

class UnixAddress {
 public:
  // Throws Error(kInvalidArgument) naming the path when it is empty, its name does not fit, or
  // its directory cannot be opened (ErrorKind of errno then). `room`: bytes a caller appends to
  // text() for other sockets beside this one (the vsock device's `_PORT`); a path that fits
  // only without them goes through its directory too.
  explicit UnixAddress(const std::filesystem::path& path, size_t room = 0);

  const sockaddr* get() const noexcept { return reinterpret_cast<const sockaddr*>(&sa_); }
  socklen_t size() const noexcept { return sizeof sa_; }
  // The path bind and connect see: the path itself, or /proc/self/fd/N/NAME.
  const char* text() const noexcept { return sa_.sun_path; }
  // Whether it goes through the directory's descriptor (the path was too long).
  bool via_directory() const noexcept { return bool(dir_); }

 private:
  sockaddr_un sa_{};
  UniqueFd dir_;  // the path's directory while the address names it through /proc/self/fd
};

}  // namespace img2vm
