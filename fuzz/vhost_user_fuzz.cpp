// libFuzzer target for the vhost-user frontend reading a hostile backend's replies: the input is
// what the backend sends (written to the other end of a socketpair, which is then shut for
// writing), and the frontend runs a device's whole life over it: handshake, features, memory
// table, rings set up, started and stopped. Every malformed, truncated, misdirected or missing
// reply must end as img2vm::Error, never a crash, a hang or a leaked descriptor.
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>

#include "img2vm/base/error.hpp"
#include "img2vm/base/fd.hpp"
#include "vhost_user.hpp"

using namespace img2vm;
using namespace img2vm::vm;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size > 4096) return 0;  // fits in the socket's buffer: the write below never blocks
  int sv[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) return 0;
  UniqueFd peer(sv[1]);
  if (size && ::write(peer.get(), data, size) != ssize_t(size)) return 0;
  ::shutdown(peer.get(), SHUT_WR);  // then end of file: no waiting for the timeout
  UniqueFd ev(::eventfd(0, EFD_CLOEXEC));
  try {
    VhostUserFrontend fe(UniqueFd(sv[0]), "fuzz", std::chrono::milliseconds(1000));
    uint64_t features = fe.handshake();
    fe.set_features(features);
    const VhostMemRegion ram{0, 1 << 20, 0x7f0000000000, 0, ev.get()};
    fe.set_mem_table({&ram, 1});
    for (unsigned q = 0; q < 2; ++q) {
      fe.set_vring_num(q, 256);
      fe.set_vring_base(q, 0);
      fe.set_vring_addr(q, 0x7f0000001000, 0x7f0000003000, 0x7f0000002000);
      fe.set_vring_kick(q, ev.get());
      fe.set_vring_call(q, ev.get());
      fe.set_vring_enable(q, true);
    }
    for (unsigned q = 0; q < 2; ++q) fe.get_vring_base(q);
  } catch (const Error&) {
  }
  return 0;
}
