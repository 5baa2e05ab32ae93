#include "guest_ports.hpp"

#include <cstring>

#include "img2vm/guestabi/ports.hpp"

namespace img2vm::vm {

void GuestPorts::set_window_size(uint16_t rows, uint16_t cols) {
  window_size_ = uint32_t(rows) << 16 | cols;
  window_changed_ = true;
}

void GuestPorts::attach(Bus& ports) {
  // A port of `width` bytes that takes writes (`write`) or reads of that width at its base;
  // `io` gets the data.
  auto claim = [&ports](uint16_t port, unsigned width, bool write, const char* name,
                        std::function<void(uint8_t*)> io) {
    ports.add(port, width, name,
              [&ports, width, write, io = std::move(io)](uint64_t offset, bool w, uint8_t* data,
                                                         unsigned size) {
                if (offset != 0 || size != width || w != write)
                  return ports.unclaimed(w, data, size);
                io(data);
              });
  };
  claim(guestabi::kExitPort, 1, true, "EXIT", [this](uint8_t* d) { events_.exited(d[0]); });
  claim(guestabi::kInitFailPort, 1, true, "INIT_FAIL",
        [this](uint8_t* d) { events_.init_failed(d[0]); });
  claim(guestabi::kBootMarkPort, 1, true, "BOOT_MARK",
        [this](uint8_t* d) { events_.boot_mark(d[0]); });
  claim(guestabi::kSignalPort, 1, false, "SIGNAL", [this](uint8_t* d) {
    d[0] = pending_signal_.exchange(0);
    if (d[0] == 0 && window_changed_.exchange(false)) d[0] = guestabi::kWindowSizeChanged;
    if (d[0] == 0 && input_closed_.exchange(false)) d[0] = guestabi::kStdinClosed;
  });
  for (uint16_t port : {guestabi::kWinRowsPort, guestabi::kWinColsPort}) {
    claim(port, 2, false, "WINSIZE", [this, port](uint8_t* d) {
      uint32_t ws = window_size_.load();
      uint16_t v = port == guestabi::kWinRowsPort ? uint16_t(ws >> 16) : uint16_t(ws & 0xffff);
      d[0] = uint8_t(v & 0xff);
      d[1] = uint8_t(v >> 8);
    });
  }
  claim(guestabi::kStdinBytesPort, 4, false, "STDIN_BYTES", [this](uint8_t* d) {
    uint32_t v = input_bytes_.load();
    std::memcpy(d, &v, 4);
  });
}

}  // namespace img2vm::vm
