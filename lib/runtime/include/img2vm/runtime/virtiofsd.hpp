// A host directory shared with a guest through virtio-fs: one virtiofsd (qemu's, from Debian's
// qemu-system-common) serving it, and a connected vhost-user socket for vm::FsConfig::socket_fd.
//
//   img2vm::runtime::VirtiofsdOptions vo;
//   vo.source = "/srv/data";
//   vo.read_only = true;
//   auto share = img2vm::runtime::Virtiofsd::start(vo);
//   config.fs.push_back({"img2vm-fs0", {}, share.socket_fd()});   // share outlives the VM
#pragma once

#include <sys/types.h>

#include <chrono>
#include <filesystem>
#include <string>

#include "img2vm/base/fd.hpp"

namespace img2vm::runtime {

// Where virtiofsd is: `explicit_path` when given, else $IMG2VM_VIRTIOFSD, else
// /usr/lib/qemu/virtiofsd (Debian), /usr/libexec/virtiofsd. Throws Error(kNotFound) naming
// the package to install or the variable to set.
std::filesystem::path find_virtiofsd(const std::filesystem::path& explicit_path = {});

// The directory a share serves: `source`, canonical. Throws Error(kNotFound) "bind source path
// does not exist: ..." (docker's words), or Error(kInvalidArgument) when it is no directory.
std::filesystem::path share_source(const std::filesystem::path& source);

struct VirtiofsdOptions {
  std::filesystem::path source;   // the host directory (must exist)
  bool read_only = false;         // refused on the host: a read-only bind mount under virtiofsd
  std::filesystem::path program;  // empty: find_virtiofsd()
  // How long virtiofsd gets to answer its first vhost-user request.
  std::chrono::milliseconds start_timeout{10000};
};

// A virtiofsd to be started later, by the process that will run the VM: the device's tag and
// the options (MachineOptions::defer_shares; a detached VM's monitor starts them, so that they
// live exactly as long as it).
struct DeferredShare {
  std::string tag;
  VirtiofsdOptions options;
};

// One virtiofsd serving one directory. It runs in a mount namespace of its own (and, when the
// caller is not root, an unprivileged user namespace mapping the caller to root) where the
// source is a read-only bind mount when `read_only`, so the host refuses writes whatever the
// guest does; inside it virtiofsd's own sandbox (namespaces, pivot_root) applies. Its stderr is
// kept in a pipe (the first 64 KiB; more is dropped, never blocking it), not the terminal; it
// leaves the caller's session (no terminal signals) and is killed (SIGKILL) when the thread that
// started it ends. Destroying the handle stops it (SIGTERM, then SIGKILL) and reaps it.
class Virtiofsd {
 public:
  // Starts virtiofsd and waits (bounded) until it answers on the socket. Throws Error: kNotFound
  // when the source or virtiofsd is missing, kInvalidArgument when the source is no directory,
  // kUnsupported when namespaces are not allowed here, kIo when virtiofsd fails (with its last
  // lines).
  static Virtiofsd start(const VirtiofsdOptions& options);
  Virtiofsd(Virtiofsd&& other) noexcept;
  Virtiofsd& operator=(Virtiofsd&& other) noexcept;
  Virtiofsd(const Virtiofsd&) = delete;
  Virtiofsd& operator=(const Virtiofsd&) = delete;
  ~Virtiofsd();

  // The connected vhost-user socket (close-on-exec; owned by this object).
  int socket_fd() const noexcept { return socket_.get(); }
  // The process started (virtiofsd), 0 once stopped.
  pid_t pid() const noexcept { return pid_; }
  const std::filesystem::path& source() const noexcept { return source_; }
  // The last lines virtiofsd wrote on stderr (at most about 2 KiB).
  std::string log_tail();
  // Stops and reaps it (also done by the destructor): SIGTERM, up to `grace`, then SIGKILL.
  void stop(std::chrono::milliseconds grace = std::chrono::seconds(2)) noexcept;

 private:
  Virtiofsd() = default;
  pid_t pid_ = 0;
  UniqueFd pidfd_, socket_, log_;
  std::string tail_;
  std::filesystem::path source_;
};

}  // namespace img2vm::runtime
