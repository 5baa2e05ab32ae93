#include "vhost_user.hpp"

#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <utility>
#include <vector>

#include "img2vm/base/error.hpp"

namespace img2vm::vm {

using namespace vhost_user;

namespace {

const char* request_name(uint32_t r) {
  switch (r) {
    case kGetFeatures:
      return "GET_FEATURES";
    case kSetFeatures:
      return "SET_FEATURES";
    case kSetOwner:
      return "SET_OWNER";
    case kSetMemTable:
      return "SET_MEM_TABLE";
    case kSetVringNum:
      return "SET_VRING_NUM";
    case kSetVringAddr:
      return "SET_VRING_ADDR";
    case kSetVringBase:
      return "SET_VRING_BASE";
    case kGetVringBase:
      return "GET_VRING_BASE";
    case kSetVringKick:
      return "SET_VRING_KICK";
    case kSetVringCall:
      return "SET_VRING_CALL";
    case kGetProtocolFeatures:
      return "GET_PROTOCOL_FEATURES";
    case kSetProtocolFeatures:
      return "SET_PROTOCOL_FEATURES";
    case kSetVringEnable:
      return "SET_VRING_ENABLE";
    default:
      return "request";
  }
}

struct VringState {
  uint32_t index, num;
};
struct VringAddr {
  uint32_t index, flags;
  uint64_t desc, used, avail, log;
};
struct MemRegion {
  uint64_t guest_addr, size, user_addr, mmap_offset;
};
struct MemTable {
  uint32_t num, padding;
  MemRegion regions[kMaxMemRegions];
};

void set_timeout(int fd, int opt, std::chrono::milliseconds t) {
  timeval tv{};
  tv.tv_sec = time_t(t.count() / 1000);
  tv.tv_usec = suseconds_t(t.count() % 1000 * 1000);
  if (::setsockopt(fd, SOL_SOCKET, opt, &tv, sizeof tv) != 0)
    throw_errno("setsockopt on the vhost-user socket");
}

}  // namespace

VhostUserFrontend::VhostUserFrontend(UniqueFd sock, std::string name,
                                     std::chrono::milliseconds timeout)
    : sock_(std::move(sock)), name_(std::move(name)) {
  if (!sock_) throw Error(ErrorKind::kInvalidArgument, name_ + ": no vhost-user socket");
  if (timeout.count() <= 0)
    throw Error(ErrorKind::kInvalidArgument, name_ + ": the reply timeout must be positive");
  set_timeout(sock_.get(), SO_RCVTIMEO, timeout);
  set_timeout(sock_.get(), SO_SNDTIMEO, timeout);
}

VhostUserFrontend VhostUserFrontend::connect(const std::string& path, std::string name,
                                             std::chrono::milliseconds timeout) {
  sockaddr_un sa{};
  sa.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof sa.sun_path)
    throw Error(ErrorKind::kInvalidArgument,
                name + ": vhost-user socket path empty or too long: " + path);
  std::memcpy(sa.sun_path, path.data(), path.size());
  UniqueFd s(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!s) throw_errno(name + ": socket");
  if (::connect(s.get(), reinterpret_cast<const sockaddr*>(&sa), sizeof sa) != 0)
    throw_errno(name + ": cannot connect to " + path);
  return VhostUserFrontend(std::move(s), std::move(name), timeout);
}

void VhostUserFrontend::fail(uint32_t request, const std::string& why) {
  if (broken_.empty()) broken_ = name_ + ": " + request_name(request) + ": " + why;
  throw Error(ErrorKind::kIo, broken_);
}

void VhostUserFrontend::send_all(uint32_t request, const void* payload, uint32_t size,
                                 std::span<const int> fds, bool need_reply) {
  uint8_t msg[kHeaderSize + sizeof(MemTable)];
  if (size > sizeof msg - kHeaderSize) fail(request, "message too large");
  const uint32_t hdr[3] = {request, kVersion | (need_reply ? kFlagNeedReply : 0), size};
  std::memcpy(msg, hdr, kHeaderSize);
  if (size) std::memcpy(msg + kHeaderSize, payload, size);
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * kMaxMemRegions)] = {};
  size_t done = 0, total = kHeaderSize + size;
  while (done < total) {
    iovec iov{msg + done, total - done};
    msghdr mh{};
    mh.msg_iov = &iov;
    mh.msg_iovlen = 1;
    if (done == 0 && !fds.empty()) {
      if (fds.size() > kMaxMemRegions) fail(request, "too many file descriptors");
      mh.msg_control = control;
      mh.msg_controllen = CMSG_SPACE(sizeof(int) * fds.size());
      cmsghdr* c = CMSG_FIRSTHDR(&mh);
      c->cmsg_level = SOL_SOCKET;
      c->cmsg_type = SCM_RIGHTS;
      c->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
      std::memcpy(CMSG_DATA(c), fds.data(), sizeof(int) * fds.size());
    }
    ssize_t n = ::sendmsg(sock_.get(), &mh, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
      fail(request, "the backend does not take messages (timed out)");
    if (n < 0) fail(request, std::string("cannot send: ") + std::strerror(errno));
    done += size_t(n);
  }
}

uint64_t VhostUserFrontend::receive_reply(uint32_t request) {
  // Reads exactly `len` bytes; any descriptor the backend attaches is closed and refused.
  auto read_exact = [&](void* dst, size_t len) {
    size_t done = 0;
    while (done < len) {
      iovec iov{static_cast<uint8_t*>(dst) + done, len - done};
      alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * 4)];
      msghdr mh{};
      mh.msg_iov = &iov;
      mh.msg_iovlen = 1;
      mh.msg_control = control;
      mh.msg_controllen = sizeof control;
      ssize_t n = ::recvmsg(sock_.get(), &mh, MSG_CMSG_CLOEXEC);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
        fail(request, "no reply from the backend (timed out)");
      if (n < 0) fail(request, std::string("cannot receive the reply: ") + std::strerror(errno));
      bool fds = false;
      for (cmsghdr* c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
        size_t k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (size_t i = 0; i < k; ++i) {
          int fd;
          std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
          ::close(fd);
        }
        fds = true;
      }
      if (fds || (mh.msg_flags & MSG_CTRUNC)) fail(request, "the reply carries file descriptors");
      if (n == 0) fail(request, "the backend closed the connection");
      done += size_t(n);
    }
  };
  uint32_t hdr[3];
  read_exact(hdr, sizeof hdr);
  if (hdr[0] != request)
    fail(request, "the reply answers request " + std::to_string(hdr[0]) + ", not " +
                      std::to_string(request));
  if (hdr[1] != (kVersion | kFlagReply)) fail(request, "bad reply flags " + std::to_string(hdr[1]));
  if (hdr[2] != sizeof(uint64_t))
    fail(request, "reply payload of " + std::to_string(hdr[2]) + " bytes, expected 8");
  uint64_t v;
  read_exact(&v, sizeof v);
  return v;
}

void VhostUserFrontend::call(uint32_t request, const void* payload, uint32_t size,
                             std::span<const int> fds, uint64_t* reply) {
  if (!broken_.empty()) throw Error(ErrorKind::kIo, broken_);
  const bool ack = !reply && (protocol_features_ & kProtocolFReplyAck);
  send_all(request, payload, size, fds, ack);
  if (reply) {
    *reply = receive_reply(request);
  } else if (ack) {
    if (uint64_t status = receive_reply(request); status != 0)
      fail(request, "the backend refused it (status " + std::to_string(status) + ")");
  }
}

uint64_t VhostUserFrontend::handshake() {
  call(kSetOwner, nullptr, 0, {}, nullptr);
  uint64_t features = 0;
  call(kGetFeatures, nullptr, 0, {}, &features);
  virtio_features_offered_ = features;
  if (features & kFProtocolFeatures) {
    uint64_t proto = 0;
    call(kGetProtocolFeatures, nullptr, 0, {}, &proto);
    uint64_t want = proto & kProtocolFReplyAck;
    call(kSetProtocolFeatures, &want, sizeof want, {}, nullptr);
    protocol_features_ = want;  // acks from the next request on
  }
  return features & ~kFProtocolFeatures;
}

void VhostUserFrontend::set_features(uint64_t features) {
  // Keep the protocol-features bit when the backend offered it: without it, a backend treats
  // the protocol features as not negotiated (and rings as enabled at once).
  uint64_t v = features | (virtio_features_offered_ & kFProtocolFeatures);
  call(kSetFeatures, &v, sizeof v, {}, nullptr);
}

void VhostUserFrontend::set_mem_table(std::span<const VhostMemRegion> regions) {
  if (regions.empty() || regions.size() > kMaxMemRegions)
    throw Error(ErrorKind::kInvalidArgument, name_ + ": SET_MEM_TABLE takes 1 to 8 regions, not " +
                                                 std::to_string(regions.size()));
  MemTable t{};
  int fds[kMaxMemRegions];
  t.num = uint32_t(regions.size());
  for (size_t i = 0; i < regions.size(); ++i) {
    t.regions[i] = {regions[i].guest_addr, regions[i].size, regions[i].user_addr,
                    regions[i].mmap_offset};
    fds[i] = regions[i].fd;
  }
  const uint32_t size = uint32_t(8 + sizeof(MemRegion) * regions.size());
  call(kSetMemTable, &t, size, std::span<const int>(fds, regions.size()), nullptr);
}

void VhostUserFrontend::set_vring_num(unsigned index, unsigned num) {
  VringState s{index, num};
  call(kSetVringNum, &s, sizeof s, {}, nullptr);
}

void VhostUserFrontend::set_vring_addr(unsigned index, uint64_t desc, uint64_t used,
                                       uint64_t avail) {
  VringAddr a{index, 0, desc, used, avail, 0};
  call(kSetVringAddr, &a, sizeof a, {}, nullptr);
}

void VhostUserFrontend::set_vring_base(unsigned index, unsigned base) {
  VringState s{index, base};
  call(kSetVringBase, &s, sizeof s, {}, nullptr);
}

void VhostUserFrontend::set_vring_kick(unsigned index, int fd) {
  uint64_t v = index & 0xff;
  call(kSetVringKick, &v, sizeof v, std::span<const int>(&fd, 1), nullptr);
}

void VhostUserFrontend::set_vring_call(unsigned index, int fd) {
  uint64_t v = index & 0xff;
  call(kSetVringCall, &v, sizeof v, std::span<const int>(&fd, 1), nullptr);
}

void VhostUserFrontend::set_vring_enable(unsigned index, bool enable) {
  // Without the protocol-features bit, rings run once kicked: there is no such request.
  if (!(virtio_features_offered_ & kFProtocolFeatures)) return;
  VringState s{index, enable ? 1u : 0u};
  call(kSetVringEnable, &s, sizeof s, {}, nullptr);
}

unsigned VhostUserFrontend::get_vring_base(unsigned index) {
  VringState s{index, 0};
  uint64_t v = 0;
  call(kGetVringBase, &s, sizeof s, {}, &v);
  VringState r;
  std::memcpy(&r, &v, sizeof r);
  if (r.index != index)
    fail(kGetVringBase,
         "the reply is for ring " + std::to_string(r.index) + ", not " + std::to_string(index));
  if (r.num > 0xffff) fail(kGetVringBase, "ring index " + std::to_string(r.num) + " out of range");
  return r.num;
}

}  // namespace img2vm::vm
