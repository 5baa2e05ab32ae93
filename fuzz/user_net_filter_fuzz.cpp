// libFuzzer target for the user-mode network's policy filter (lib/vm/src/net_filter.hpp): it
// parses every Ethernet frame the guest sends. The input is split into frames; each is checked
// under the four outbound/host-loopback settings and also noted as a frame to the guest (which
// learns UDP flows). A refusal must produce a well-formed TCP reset. Crashes, out-of-bounds
// reads (ASan) and UB (UBSan) are bugs.
#include <cstddef>
#include <cstdint>
#include <vector>

#include "net_filter.hpp"

using img2vm::vm::detail::UserNetFilter;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  UserNetFilter filters[] = {{false, false, {53, 5353}, 0x0a000202, 0x0a000203},
                             {true, false, {53}, 0x0a000202, 0x0a000203},
                             {false, true, {}, 0x0a000202, 0x0a000203}};
  std::vector<uint8_t> reply;
  // Frames: a length byte, then that many bytes (so several frames share flow state).
  for (size_t off = 0; off < size;) {
    size_t len = data[off++] * 2;
    if (len > size - off) len = size - off;
    std::span<const uint8_t> frame(data + off, len);
    for (auto& f : filters) {
      f.note_to_guest(frame);
      reply.clear();
      if (f.check_from_guest(frame, reply) == UserNetFilter::Verdict::kRefuse && reply.size() != 54) __builtin_trap();
    }
    off += len;
  }
  return 0;
}
