#include "img2vm/base/error.hpp"

#include <cerrno>
#include <cstring>

namespace img2vm {

Error::Error(ErrorKind kind, std::string message)
    : std::runtime_error(std::move(message)), kind_(kind) {}

Error Error::with_context(std::string_view context) const {
  std::string msg(context);
  msg += ": ";
  msg += what();
  return Error(kind_, std::move(msg));
}

void throw_errno(std::string_view what, int err) {
  std::string msg(what);
  msg += ": ";
  msg += std::strerror(err);
  throw Error(err == ENOENT ? ErrorKind::kNotFound : ErrorKind::kIo, std::move(msg));
}

void throw_errno(std::string_view what) { throw_errno(what, errno); }

}  // namespace img2vm
