// A snapshot's state file is read back from disk, where anything may have happened to it: the
// parser must never crash, what it accepts must come back the same when written again, and
// the VMM's own devices and the virtio-mmio transports with their virtio-blk, virtio-net and vsock
// devices must take or refuse any saved state without harm (and a state taken saves back the
// same).
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string_view>

#include "echo_backend.hpp"
#include "i8042.hpp"
#include "img2vm/base/error.hpp"
#include "img2vm/base/fd.hpp"
#include "snapshot_file.hpp"
#include "uart.hpp"
#include "virtio_blk.hpp"
#include "virtio_mmio.hpp"
#include "virtio_net.hpp"
#include "virtio_vsock.hpp"

namespace {

using namespace img2vm::vm;

// Slot `slot`'s device state (section 51) into `dev`, when it takes it, and its transport state
// (section 50) into a new transport over `mem`, which must save and load again to the same
// bytes. Throws Error when the transport refuses its state.
std::unique_ptr<VirtioMmio> load_slot(GuestMemory& mem, VirtioDevice& dev, const SnapshotState& st,
                                      uint32_t slot) {
  try {
    dev.load_state(st.get(Section::kVirtioDevice, slot));
  } catch (const img2vm::Error&) {
  }
  auto t = std::make_unique<VirtioMmio>(mem, dev, [] {});
  t->load(st.get(Section::kVirtioMmio, slot));
  const auto saved = t->save();
  VirtioMmio again(mem, dev, [] {});
  again.load(saved);
  if (again.save() != saved) __builtin_trap();
  return t;
}

// Section 50/51 instance 0 into a fresh virtio-blk transport over 64 KiB of guest memory;
// what loads is exercised by a notification and register reads, and must save and load again
// to the same bytes.
void load_virtio(const SnapshotState& st) {
  GuestMemory mem(64 * 1024);
  int fd = ::memfd_create("fuzz-disk", MFD_CLOEXEC);
  if (fd < 0 || ::ftruncate(fd, 64 * 512) != 0) __builtin_trap();
  VirtioBlk blk(fd_disk_view(fd, 64 * 512, false), "fuzz");
  auto t = load_slot(mem, blk, st, 0);
  t->notify();
  for (uint64_t off = 0; off < 0x100; off += 4) {
    uint32_t v;
    t->read(off, reinterpret_cast<uint8_t*>(&v), 4);
  }
  t->raise_pending();
}

// Section 50/51 instance 1 into a fresh virtio-net transport (a backend that answers some
// frames at once), the NIC's slot after one disk; handled as a restored VM's NIC is at its
// start: one notification, with frames waiting for the guest.
void load_virtio_net(const SnapshotState& st) {
  GuestMemory mem(64 * 1024);
  img2vm::fuzzing::EchoBackend backend(false);
  VirtioNet net(backend, {0x52, 0x54, 0, 1, 2, 3}, 1500);
  auto t = load_slot(mem, net, st, 1);
  const uint8_t frame[64] = {0x52, 0x54, 0, 1, 2, 3};
  net.receive(frame);
  t->notify();
  t->raise_pending();
}

// Section 50/51 instance 2 into a virtio-vsock transport (the slot after a disk and a NIC), as a
// restored VM's vsock device is handled at its start: one notification. One device for every
// input (it listens on a socket), reset in between.
void load_virtio_vsock(const SnapshotState& st) {
  static img2vm::TempDir dir("fuzz-vsock");
  static VirtioVsock vsock(3, dir.path() / "v.sock");
  vsock.reset();
  GuestMemory mem(64 * 1024);
  auto t = load_slot(mem, vsock, st, 2);
  t->notify();
  t->raise_pending();
  try {
    (void)vsock.save_state();
  } catch (const img2vm::Error&) {  // connections the guest's packets asked for
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace img2vm::vm;
  std::string_view in(reinterpret_cast<const char*>(data), size);
  try {
    SnapshotState st = SnapshotState::parse(in);
    SnapshotWriter w;
    for (const auto& e : st.entries()) w.add(e.section, e.instance, e.payload);
    SnapshotState again = SnapshotState::parse(w.serialize());
    auto a = st.entries(), b = again.entries();
    if (a.size() != b.size()) __builtin_trap();
    for (size_t i = 0; i < a.size(); ++i)
      if (a[i].section != b[i].section || a[i].instance != b[i].instance ||
          !std::equal(a[i].payload.begin(), a[i].payload.end(), b[i].payload.begin(),
                      b[i].payload.end()))
        __builtin_trap();
    try {
      (void)st.get_struct<SnapshotMachine>(Section::kMachine, 0);
      (void)st.get_array<SnapshotMsr>(Section::kMsrs, 0, 1024);
    } catch (const img2vm::Error&) {
    }
    try {
      Uart8250 uart([](uint8_t) {}, [](bool) {});
      uart.load(st.get_struct<Uart8250::State>(Section::kUart, 0));
      for (uint16_t r = 0; r < 8; ++r) (void)uart.read(r);
    } catch (const img2vm::Error&) {
    }
    try {
      load_virtio(st);
    } catch (const img2vm::Error&) {
    }
    try {
      load_virtio_net(st);
    } catch (const img2vm::Error&) {
    }
    try {
      load_virtio_vsock(st);
    } catch (const img2vm::Error&) {
    }
    try {
      I8042 kbd;
      kbd.load(st.get_struct<I8042::State>(Section::kI8042, 0));
      for (int i = 0; i < 20; ++i) (void)kbd.read(0x60);
    } catch (const img2vm::Error&) {
    }
  } catch (const img2vm::Error&) {
  }
  return 0;
}
