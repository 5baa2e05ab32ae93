// A 16550A-compatible UART (the 8250 family) as Linux's 8250 driver sees it: transmit goes to
// a callback at once (THR is always empty: LSR reads 0x60 when idle), receive through a
// 64-byte FIFO filled by the host, interrupts for received data and THR empty, loopback mode
// for the driver's probe. Register offsets are relative to the base port (0x3f8).
// Thread-safe: the vCPU thread accesses registers while the host pushes input.
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>

namespace img2vm::vm {

class Uart8250 {
 public:
  using OutputFn = std::function<void(uint8_t)>;
  using IrqFn = std::function<void(bool level)>;
  static constexpr size_t kFifoSize = 64;

  Uart8250(OutputFn out, IrqFn irq) : out_(std::move(out)), irq_(std::move(irq)) {}

  uint8_t read(uint16_t offset);
  void write(uint16_t offset, uint8_t value);
  // Queues received bytes; returns how many fit (the rest must be offered again later).
  size_t push_input(const uint8_t* data, size_t len);
  size_t input_space() const;

  // The registers and the received bytes not yet read, for a snapshot (docs/snapshots.md).
  struct State {
    uint8_t ier, lcr, mcr, scr, dll, dlm, fcr, thr_ipending, irq_level, rx_len;
    uint8_t reserved[6];
    uint8_t rx[kFifoSize];
  };
  State save() const;
  // Takes a saved state; the interrupt line's level is taken as saved (the restored interrupt
  // controller holds it). Throws Error for a state save() cannot give.
  void load(const State& s);

 private:
  void update_irq_locked();  // recomputes the IRQ line; calls irq_ on a change

  OutputFn out_;
  IrqFn irq_;
  mutable std::mutex mu_;
  std::deque<uint8_t> rx_;
  uint8_t ier_ = 0, lcr_ = 0, mcr_ = 0x08, scr_ = 0, dll_ = 0x0c, dlm_ = 0, fcr_ = 0;
  bool thr_ipending_ = false;  // the THR-empty interrupt is pending until IIR reports it
  bool irq_level_ = false;
};

}  // namespace img2vm::vm
