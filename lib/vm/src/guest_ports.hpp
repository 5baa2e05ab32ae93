// The I/O ports of the guest init (img2vm::guestabi, docs/guest-abi.md §5) on the machine's port
// bus: EXIT, INIT_FAIL and BOOT_MARK (8-bit writes) become events for the runner; SIGNAL (8-bit),
// WINSIZE (two 16-bit) and STDIN_BYTES (32-bit) read what the host set. Any other access to
// them (another size, a read of a write port, a byte inside a wider port) is a floating bus.
// The host side is thread-safe; the port side runs on the vCPU threads.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>

#include "bus.hpp"

namespace img2vm::vm {

class GuestPorts {
 public:
  struct Events {
    std::function<void(uint8_t status)> exited;     // EXIT
    std::function<void(uint8_t code)> init_failed;  // INIT_FAIL
    std::function<void(uint8_t mark)> boot_mark;    // BOOT_MARK
  };
  explicit GuestPorts(Events events) : events_(std::move(events)) {}
  GuestPorts(const GuestPorts&) = delete;
  GuestPorts& operator=(const GuestPorts&) = delete;

  // Claims the ports on `ports` (a bus whose unclaimed reads are 0xff); both must outlive it.
  void attach(Bus& ports);

  // What the next SIGNAL read returns (a signal 1-64 or guestabi::kStopRequest), replacing one
  // not yet read.
  void request_signal(uint8_t value) { pending_signal_ = value; }
  // The terminal's size for WINSIZE; SIGNAL then reports guestabi::kWindowSizeChanged once.
  void set_window_size(uint16_t rows, uint16_t cols);
  // Console input: `n` more bytes went to the guest (STDIN_BYTES counts them mod 2^32).
  void add_input_bytes(uint32_t n) { input_bytes_ += n; }
  // The console input ended: SIGNAL reports guestabi::kStdinClosed once.
  void close_input() { input_closed_ = true; }

 private:
  Events events_;
  std::atomic<uint32_t> window_size_{0};  // rows << 16 | cols
  std::atomic<bool> window_changed_{false};
  std::atomic<uint8_t> pending_signal_{0};
  std::atomic<uint32_t> input_bytes_{0};
  std::atomic<bool> input_closed_{false};
};

}  // namespace img2vm::vm
