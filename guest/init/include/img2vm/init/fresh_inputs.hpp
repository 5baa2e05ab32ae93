// What every run hands the guest fresh (RunOverrides::entropy and realtime_ns), which matters most
// in a VM restored from a snapshot: its kernel's RNG state and clock are the saved VM's
// (docs/guest-abi.md §3, docs/snapshots.md).
#pragma once

#include <cstdint>
#include <string_view>

namespace img2vm::init {

// Mixes `bytes` (at most guestabi::kMaxEntropyBytes) into the kernel's input pool, crediting 8
// bits a byte (RNDADDENTROPY), then makes the CRNG reseed from that pool (RNDRESEEDCRNG), which
// also makes every CPU's CRNG take a new key before its next output. Needs CAP_SYS_ADMIN; throws
// Error naming the step.
void add_entropy(std::string_view bytes);

// Moves CLOCK_REALTIME forward to `ns` nanoseconds since the epoch, never back: a VM resumed
// from a snapshot has the snapshot's time, behind `ns` (the host's time when it wrote the
// overrides); a cold boot's clock came from the host while the kernel booted, after `ns`, and
// setting it back would lose the boot's time. True when it was set. Throws Error.
bool set_realtime(int64_t ns);

}  // namespace img2vm::init
