// libFuzzer target for the virtio-blk request path: the input becomes the first 64 KiB of a
// guest's memory (descriptor table, rings, headers, buffers); its first bytes also pick the
// queue size and the avail index. The queue is then processed as the I/O thread would, over
// an in-memory disk. Crashes, out-of-bounds accesses (ASan) and UB (UBSan) are bugs.
#include <sys/mman.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "guest_memory.hpp"
#include "img2vm/base/fd.hpp"
#include "virtio_blk.hpp"
#include "virtio_mmio.hpp"

using namespace img2vm;
using namespace img2vm::vm;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static GuestMemory mem(1u << 20);
  // Two disks: a plain file, and a copy-on-write overlay (odd sizes on purpose) whose sector
  // bitmap and copy-up paths then see the same hostile requests.
  static VirtioBlk* plain = [] {
    int fd = ::memfd_create("fuzz-disk", MFD_CLOEXEC);
    if (fd < 0 || ::ftruncate(fd, 64 * 512) != 0) __builtin_trap();
    return new VirtioBlk(fd_disk_view(fd, 64 * 512, false), "fuzz");
  }();
  static VirtioBlk* overlay = [] {
    int base = ::memfd_create("fuzz-base", MFD_CLOEXEC),
        top = ::memfd_create("fuzz-top", MFD_CLOEXEC);
    if (base < 0 || top < 0 || ::ftruncate(base, 40 * 512 + 100) != 0) __builtin_trap();
    return new VirtioBlk(overlay_disk_view(base, top, 40 * 512 + 100), "fuzz-cow");
  }();
  if (size < 4) return 0;
  VirtioBlk* blk = data[0] & 2 ? overlay : plain;
  std::memset(mem.host_base(), 0, 0x10000);
  std::memcpy(mem.host_base(), data, std::min<size_t>(size, 0x10000));

  // Through the transport too: the guest programs the queue with register writes.
  VirtioMmio dev(mem, *blk, [] {});
  auto wr = [&](uint64_t off, uint32_t v) {
    dev.write(off, reinterpret_cast<const uint8_t*>(&v), 4);
  };
  wr(0x070, 3);
  wr(0x024, 1);
  wr(0x020, 1);
  wr(0x024, 0);
  wr(0x020, data[0] & 1 ? (1u << 9) : 0);
  wr(0x070, 11);
  wr(0x030, 0);
  wr(0x038, 1u << (data[1] % 10));    // queue sizes 1..512 (512 is refused)
  wr(0x080, uint32_t(data[2]) << 8);  // descriptors, avail and used inside the input
  wr(0x090, uint32_t(data[3]) << 6);
  wr(0x0a0, 0x8000 + (uint32_t(data[2] ^ data[3]) << 4));
  wr(0x044, 1);
  wr(0x070, 15);
  dev.notify();
  dev.notify();  // again: nothing new must be fine too
  uint32_t status;
  dev.read(0x070, reinterpret_cast<uint8_t*>(&status), 4);
  return 0;
}
