// The frontend side of the vhost-user protocol (qemu docs/interop/vhost-user.rst): the VMM hands
// a device's virtqueues to a backend process (virtiofsd) over a unix socket. Messages are a
// 12-byte header (request, flags, payload size) and a payload; file descriptors (guest RAM's
// memfd, the queues' eventfds) travel as SCM_RIGHTS.
//
// The backend is not trusted: every reply is checked (reply flag and version, the request it
// answers, its exact payload size, no descriptors attached) and waited for at most `timeout`
// (SO_RCVTIMEO/SO_SNDTIMEO on the socket, so that only sendmsg and recvmsg on this one socket
// are needed: the seccomp filter of the thread talking to it allows just those). A closed,
// silent or misbehaving backend is an Error naming the request; after one the connection is
// unusable (every later call throws the same Error).
#pragma once

#include <chrono>
#include <cstdint>
#include <span>
#include <string>

#include "img2vm/base/fd.hpp"

namespace img2vm::vm {

namespace vhost_user {
// Requests (frontend to backend) used here.
enum Request : uint32_t {
  kGetFeatures = 1,
  kSetFeatures = 2,
  kSetOwner = 3,
  kSetMemTable = 5,
  kSetVringNum = 8,
  kSetVringAddr = 9,
  kSetVringBase = 10,
  kGetVringBase = 11,
  kSetVringKick = 12,
  kSetVringCall = 13,
  kGetProtocolFeatures = 15,
  kSetProtocolFeatures = 16,
  kSetVringEnable = 18,
};
inline constexpr uint32_t kVersion = 1, kFlagReply = 1u << 2, kFlagNeedReply = 1u << 3;
inline constexpr uint32_t kHeaderSize = 12;
// Bit 30 of GET_FEATURES: the backend speaks GET/SET_PROTOCOL_FEATURES (not a virtio feature).
inline constexpr uint64_t kFProtocolFeatures = 1ull << 30;
inline constexpr uint64_t kProtocolFReplyAck = 1ull << 3;
inline constexpr unsigned kMaxMemRegions = 8;
}  // namespace vhost_user

// One region of the frontend's memory as SET_MEM_TABLE announces it.
struct VhostMemRegion {
  uint64_t guest_addr = 0, size = 0, user_addr = 0, mmap_offset = 0;
  int fd = -1;  // not owned
};

class VhostUserFrontend {
 public:
  static constexpr std::chrono::milliseconds kDefaultTimeout{5000};

  // Takes a connected stream socket. `name` prefixes errors ("virtiofsd for tag 'src'").
  VhostUserFrontend(UniqueFd sock, std::string name,
                    std::chrono::milliseconds timeout = kDefaultTimeout);
  // Connects to the backend's listening socket at `path`.
  static VhostUserFrontend connect(const std::string& path, std::string name,
                                   std::chrono::milliseconds timeout = kDefaultTimeout);

  int fd() const noexcept { return sock_.get(); }
  const std::string& name() const noexcept { return name_; }

  // SET_OWNER, GET_FEATURES and (when offered) GET/SET_PROTOCOL_FEATURES with REPLY_ACK if the
  // backend has it. Returns the backend's virtio features (kFProtocolFeatures removed).
  uint64_t handshake();
  uint64_t protocol_features() const noexcept { return protocol_features_; }

  void set_features(uint64_t features);
  void set_mem_table(std::span<const VhostMemRegion> regions);
  void set_vring_num(unsigned index, unsigned num);
  // Addresses in the frontend's address space (VhostMemRegion::user_addr).
  void set_vring_addr(unsigned index, uint64_t desc, uint64_t used, uint64_t avail);
  void set_vring_base(unsigned index, unsigned base);
  void set_vring_kick(unsigned index, int fd);
  void set_vring_call(unsigned index, int fd);
  // A no-op when the backend does not speak protocol features (its rings start when kicked).
  void set_vring_enable(unsigned index, bool enable);
  // Stops the ring; returns the backend's next available index.
  unsigned get_vring_base(unsigned index);

 private:
  // Sends a request (with `fds` attached) and, when `reply` is non-null or an ack is asked for,
  // reads and checks the reply (an 8-byte payload stored in *reply).
  void call(uint32_t request, const void* payload, uint32_t size, std::span<const int> fds,
            uint64_t* reply);
  void send_all(uint32_t request, const void* payload, uint32_t size, std::span<const int> fds,
                bool need_reply);
  uint64_t receive_reply(uint32_t request);
  [[noreturn]] void fail(uint32_t request, const std::string& why);

  UniqueFd sock_;
  std::string name_;
  uint64_t virtio_features_offered_ = 0;
  uint64_t protocol_features_ = 0;
  std::string broken_;
};

}  // namespace img2vm::vm
