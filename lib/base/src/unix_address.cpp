#include "img2vm/base/unix_address.hpp"

#include <fcntl.h>

#include <cstring>
#include <string>

#include "img2vm/base/error.hpp"

namespace img2vm {

namespace {
bool fill(sockaddr_un& sa, const std::string& text, size_t room) {
  if (text.size() + room >= sizeof sa.sun_path) return false;
  std::memcpy(sa.sun_path, text.data(), text.size());
  return true;
}
}  // namespace

UnixAddress::UnixAddress(const std::filesystem::path& path, size_t room) {
  sa_.sun_family = AF_UNIX;
  const std::string text = path.string();
  if (text.empty()) throw Error(ErrorKind::kInvalidArgument, "unix socket path is empty");
  if (fill(sa_, text, room)) return;
  const std::filesystem::path name = path.filename();
  if (name.empty() || name == "." || name == "..")
    throw Error(ErrorKind::kInvalidArgument, "unix socket path names no file: " + text);
  std::filesystem::path dir = path.parent_path();
  if (dir.empty()) dir = ".";
  dir_.reset(::open(dir.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC));
  if (!dir_) throw_errno("cannot open the directory of unix socket " + text);
  if (!fill(sa_, "/proc/self/fd/" + std::to_string(dir_.get()) + "/" + name.string(), room))
    throw Error(ErrorKind::kInvalidArgument, "unix socket name too long (at most " +
                                                 std::to_string(sizeof sa_.sun_path - 26 - room) +
                                                 " bytes): " + text);
}

}  // namespace img2vm
