// What every long call of the facade takes from its caller: progress, cancellation and notes.
// The library never prints, exits or touches signal dispositions; it reports through these.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <string_view>

namespace img2vm::runtime {

// Progress, cancellation and notes for a pull or a convert.
struct Hooks {
  // (phase, done, total): "pull" counts the bytes of the image's blobs, "layers" the layers
  // applied, "data" the bytes written into the rootfs. Called from worker threads, never two
  // at once; it must not throw.
  std::function<void(std::string_view phase, uint64_t done, uint64_t total)> progress;
  // When set and it becomes true (any thread, or a signal handler: it is only loaded), the call
  // stops at its next chunk and throws Error(kIo, "... cancelled" or "... interrupted").
  const std::atomic<bool>* cancel = nullptr;
  // One line for humans about a decision the library took ("alpine is not in the store;
  // pulling it"); the CLI prints it, an embedder may log it.
  std::function<void(std::string_view)> note;
};

// True when `hooks` asks to stop.
inline bool cancelled(const Hooks& hooks) noexcept {
  return hooks.cancel && hooks.cancel->load(std::memory_order_relaxed);
}

}  // namespace img2vm::runtime
