// The guest side of virtio-fs for tests without KVM: a virtio-mmio driver for the request
// queues in shared guest memory, and FUSE request building and reply parsing. Used by
// tests/vm (Debian's virtiofsd as the backend) and tests/runtime (runtime::Virtiofsd).
#pragma once

#include <gtest/gtest.h>
#include <linux/fuse.h>
#include <poll.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <vector>

#include "guest_memory.hpp"
#include "img2vm/base/error.hpp"
#include "virtio_mmio.hpp"
#include "virtqueue.hpp"

namespace img2vm::vm::fs_test {

using namespace std::chrono_literals;

constexpr uint16_t kQueueSize = 8;
constexpr uint32_t kStatusAck = 1, kStatusDriver = 2;
// Guest memory layout: queue q's rings at kRings + q * 0x1000, request buffers above.
constexpr uint64_t kRings = 0x10000, kIn = 0x20000, kOut = 0x30000;

// The guest's virtio-fs driver, reduced to what the tests need.
struct Driver {
  GuestMemory& mem;
  VirtioMmio& mmio;
  uint16_t avail_idx[2] = {0, 0};
  uint16_t used_seen[2] = {0, 0};

  uint32_t rd(uint64_t off) {
    uint32_t v = 0;
    mmio.read(off, reinterpret_cast<uint8_t*>(&v), 4);
    return v;
  }
  void wr(uint64_t off, uint32_t v) { mmio.write(off, reinterpret_cast<const uint8_t*>(&v), 4); }
  static uint64_t desc(unsigned q) { return kRings + q * 0x1000; }
  static uint64_t avail(unsigned q) { return desc(q) + 16 * kQueueSize; }
  static uint64_t used(unsigned q) { return desc(q) + 0x800; }

  // Negotiates every offered feature and sets up queues 0 (hiprio) and 1 (requests). Returns
  // the status after FEATURES_OK.
  uint32_t negotiate() {
    wr(0x70, 0);
    wr(0x70, kStatusAck | kStatusDriver);
    wr(0x14, 0);
    uint64_t f = rd(0x10);
    wr(0x14, 1);
    f |= uint64_t(rd(0x10)) << 32;
    wr(0x24, 0);
    wr(0x20, uint32_t(f));
    wr(0x24, 1);
    wr(0x20, uint32_t(f >> 32));
    wr(0x70, kStatusAck | kStatusDriver | VirtioMmio::kStatusFeaturesOk);
    for (unsigned q = 0; q < 2; ++q) {
      wr(0x30, q);
      wr(0x38, kQueueSize);
      wr(0x80, uint32_t(desc(q)));
      wr(0x84, 0);
      wr(0x90, uint32_t(avail(q)));
      wr(0x94, 0);
      wr(0xa0, uint32_t(used(q)));
      wr(0xa4, 0);
      wr(0x44, 1);
    }
    return rd(0x70);
  }
  void driver_ok() {
    wr(0x70,
       kStatusAck | kStatusDriver | VirtioMmio::kStatusFeaturesOk | VirtioMmio::kStatusDriverOk);
  }

  // Posts one request (`in` readable, `out_len` writable bytes at kOut) on queue `q`.
  void post(unsigned q, const std::vector<uint8_t>& in, uint32_t out_len) {
    ASSERT_TRUE(mem.write(kIn, in.data(), in.size()));
    struct Desc {
      uint64_t addr;
      uint32_t len;
      uint16_t flags, next;
    };
    Desc d0{kIn, uint32_t(in.size()), SplitQueue::kDescNext, 1};
    Desc d1{kOut, out_len, SplitQueue::kDescWrite, 0};
    ASSERT_TRUE(mem.store(desc(q), d0));
    ASSERT_TRUE(mem.store(desc(q) + 16, d1));
    const uint16_t slot = avail_idx[q] % kQueueSize;
    ASSERT_TRUE(mem.store<uint16_t>(avail(q) + 4 + 2 * slot, 0));
    // used_event (VIRTIO_RING_F_EVENT_IDX): interrupt me for the next used entry.
    ASSERT_TRUE(mem.store<uint16_t>(avail(q) + 4 + 2 * kQueueSize, used_seen[q]));
    __atomic_thread_fence(__ATOMIC_RELEASE);
    ASSERT_TRUE(mem.store<uint16_t>(avail(q) + 2, ++avail_idx[q]));
  }

  // Waits (bounded) for the backend's call (a driver sleeps until the interrupt comes; a
  // backend may signal more often, libvhost-user does once when given the eventfd) and
  // returns the bytes written into the reply.
  std::vector<uint8_t> wait_reply(unsigned q, int call_fd) {
    auto deadline = std::chrono::steady_clock::now() + 10s;
    for (;;) {
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
          deadline - std::chrono::steady_clock::now());
      pollfd p{call_fd, POLLIN, 0};
      if (left.count() <= 0 || ::poll(&p, 1, int(left.count())) != 1)
        throw Error(ErrorKind::kIo, "no call from virtiofsd in 10 s");
      uint64_t cnt;
      (void)!::read(call_fd, &cnt, sizeof cnt);
      __atomic_thread_fence(__ATOMIC_ACQUIRE);
      if (*mem.load<uint16_t>(used(q) + 2) != used_seen[q]) break;
    }
    const uint16_t slot = used_seen[q]++ % kQueueSize;
    uint32_t len = *mem.load<uint32_t>(used(q) + 4 + 8 * slot + 4);
    std::vector<uint8_t> out(len);
    EXPECT_TRUE(mem.read(kOut, out.data(), len));
    return out;
  }
};

template <class T>
inline void append(std::vector<uint8_t>& v, const T& x) {
  const size_t at = v.size();
  v.resize(at + sizeof x);
  std::memcpy(v.data() + at, &x, sizeof x);
}

inline std::vector<uint8_t> fuse_request(uint32_t opcode, uint64_t unique, uint64_t nodeid,
                                         const void* body, size_t body_len) {
  fuse_in_header h{};
  h.len = uint32_t(sizeof h + body_len);
  h.opcode = opcode;
  h.unique = unique;
  h.nodeid = nodeid;
  std::vector<uint8_t> v;
  append(v, h);
  v.resize(sizeof h + body_len);
  std::memcpy(v.data() + sizeof h, body, body_len);
  return v;
}

template <class T>
inline T reply_body(const std::vector<uint8_t>& r, uint64_t unique) {
  fuse_out_header oh{};
  EXPECT_GE(r.size(), sizeof oh + sizeof(T));
  if (r.size() < sizeof oh + sizeof(T)) return T{};
  std::memcpy(&oh, r.data(), sizeof oh);
  EXPECT_EQ(oh.unique, unique);
  EXPECT_EQ(oh.error, 0);
  EXPECT_EQ(oh.len, r.size());
  T t;
  std::memcpy(&t, r.data() + sizeof oh, sizeof t);
  return t;
}

// The error of a FUSE reply (0 or a negative errno).
inline int32_t reply_error(const std::vector<uint8_t>& r, uint64_t unique) {
  fuse_out_header oh{};
  EXPECT_GE(r.size(), sizeof oh);
  if (r.size() < sizeof oh) return 1;
  std::memcpy(&oh, r.data(), sizeof oh);
  EXPECT_EQ(oh.unique, unique);
  return oh.error;
}

}  // namespace img2vm::vm::fs_test
