// libFuzzer target for virtio-vsock: the input becomes the first 64 KiB of a guest's memory
// (descriptor tables, rings, packet headers, payloads); its first bytes also pick the queue
// size, where the descriptor tables live, and whether a host client connects (with a CONNECT
// line cut from the input) before the guest's packets are processed. The host side is real: a
// listening socket of the device's own and one at `<uds>_5000` for the guest to connect to.
// Crashes, out-of-bounds accesses (ASan), UB (UBSan) and leaks are bugs.
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>

#include "guest_memory.hpp"
#include "img2vm/base/fd.hpp"
#include "virtio_mmio.hpp"
#include "virtio_vsock.hpp"

using namespace img2vm;
using namespace img2vm::vm;

namespace {
UniqueFd unix_socket(const std::string& path, bool listen) {
  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  sockaddr_un sa{};
  sa.sun_family = AF_UNIX;
  std::strncpy(sa.sun_path, path.c_str(), sizeof sa.sun_path - 1);
  const auto* a = reinterpret_cast<const sockaddr*>(&sa);
  bool ok = listen ? ::bind(fd.get(), a, sizeof sa) == 0 && ::listen(fd.get(), 64) == 0
                   : ::connect(fd.get(), a, sizeof sa) == 0;
  return ok ? std::move(fd) : UniqueFd();
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static GuestMemory mem(1u << 20);
  static TempDir dir("fuzz-vsock");  // removed at exit
  static VirtioVsock* vsock = new VirtioVsock(3, dir.path() / "v.sock");
  static UniqueFd* peer = new UniqueFd(unix_socket((dir.path() / "v.sock_5000").string(), true));
  if (size < 8) return 0;
  std::memset(mem.host_base(), 0, 0x10000);
  std::memcpy(mem.host_base(), data, std::min<size_t>(size, 0x10000));

  VirtioMmio dev(mem, *vsock, [] {});
  vsock->set_kick([&dev] { dev.notify(); });
  auto wr = [&](uint64_t off, uint32_t v) {
    dev.write(off, reinterpret_cast<const uint8_t*>(&v), 4);
  };
  wr(0x070, 0);
  wr(0x070, 3);
  wr(0x024, 1);
  wr(0x020, 1);  // VERSION_1
  wr(0x070, 11);
  for (uint32_t q = 0; q < 3; ++q) {
    wr(0x030, q);
    wr(0x038, 1u << (data[1] % 9));  // 1..256
    wr(0x080, 0x1000 * (q + 1) + 16 * uint32_t(data[2 + q]));
    wr(0x090, 0x5000 + 0x400 * q);
    wr(0x0a0, 0x6000 + 0x400 * q);
    wr(0x044, 1);
  }
  wr(0x070, 15);

  UniqueFd client;
  if (data[0] & 1) {
    client = unix_socket((dir.path() / "v.sock").string(), false);
    // A CONNECT line for the port in data[5..6], and whatever follows it in the input.
    std::string line = "CONNECT " + std::to_string(data[5] | data[6] << 8) + "\n";
    if (data[0] & 2)
      line.assign(reinterpret_cast<const char*>(data) + 8, std::min<size_t>(size - 8, 64));
    if (client) (void)!::send(client.get(), line.data(), line.size(), MSG_NOSIGNAL);
    vsock->handle_host();
  }
  dev.notify();
  // The host peers answer and write: their bytes go to the guest as its credit allows.
  for (;;) {
    UniqueFd a(::accept4(peer->get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC));
    if (!a) break;
    (void)!::send(a.get(), data, std::min<size_t>(size, 300), MSG_NOSIGNAL);
  }
  if (client) (void)!::send(client.get(), data, std::min<size_t>(size, 200), MSG_NOSIGNAL);
  vsock->handle_host();
  dev.notify();  // again: nothing new must be fine too
  if (data[0] & 4) client.reset();
  vsock->handle_host();
  wr(0x070, 0);  // leave no connection for the next input
  vsock->handle_host();
  return 0;
}
