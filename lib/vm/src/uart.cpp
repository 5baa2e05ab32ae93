#include "uart.hpp"

#include <algorithm>

#include "img2vm/base/error.hpp"

namespace img2vm::vm {

namespace {
enum : uint16_t {
  kRbrThr = 0,
  kIer = 1,
  kIirFcr = 2,
  kLcr = 3,
  kMcr = 4,
  kLsr = 5,
  kMsr = 6,
  kScr = 7
};
constexpr uint8_t kIerRx = 0x01, kIerThre = 0x02;
constexpr uint8_t kIirNone = 0x01, kIirThre = 0x02, kIirRx = 0x04, kIirFifo = 0xc0;
constexpr uint8_t kLsrDr = 0x01, kLsrThre = 0x20, kLsrTemt = 0x40;
constexpr uint8_t kLcrDlab = 0x80, kMcrLoop = 0x10;
}  // namespace

uint8_t Uart8250::read(uint16_t offset) {
  std::lock_guard lk(mu_);
  uint8_t v = 0;
  switch (offset) {
    case kRbrThr:
      if (lcr_ & kLcrDlab) return dll_;
      if (!rx_.empty()) {
        v = rx_.front();
        rx_.pop_front();
      }
      update_irq_locked();
      return v;
    case kIer:
      return (lcr_ & kLcrDlab) ? dlm_ : ier_;
    case kIirFcr:
      if ((ier_ & kIerRx) && !rx_.empty()) {
        v = kIirRx;
      } else if ((ier_ & kIerThre) && thr_ipending_) {
        v = kIirThre;
        thr_ipending_ = false;  // reading IIR acknowledges the THR-empty interrupt
        update_irq_locked();
      } else {
        v = kIirNone;
      }
      return uint8_t(v | ((fcr_ & 1) ? kIirFifo : 0));
    case kLcr:
      return lcr_;
    case kMcr:
      return mcr_;
    case kLsr:
      return uint8_t(kLsrThre | kLsrTemt | (rx_.empty() ? 0 : kLsrDr));
    case kMsr:
      if (mcr_ & kMcrLoop) {
        // Loopback: RTS->CTS, DTR->DSR, OUT1->RI, OUT2->DCD.
        return uint8_t(((mcr_ & 0x02) << 3) | ((mcr_ & 0x01) << 5) | ((mcr_ & 0x04) << 4) |
                       ((mcr_ & 0x08) << 4));
      }
      return 0xb0;  // DCD, DSR, CTS
    case kScr:
      return scr_;
    default:
      return 0xff;
  }
}

void Uart8250::write(uint16_t offset, uint8_t value) {
  std::unique_lock lk(mu_);
  switch (offset) {
    case kRbrThr:
      if (lcr_ & kLcrDlab) {
        dll_ = value;
        return;
      }
      if (mcr_ & kMcrLoop) {
        if (rx_.size() < kFifoSize) rx_.push_back(value);
      } else {
        lk.unlock();
        out_(value);
        lk.lock();
      }
      thr_ipending_ = true;  // transmitted at once: the THR is empty again
      update_irq_locked();
      return;
    case kIer:
      if (lcr_ & kLcrDlab) {
        dlm_ = value;
        return;
      }
      // Enabling the THR-empty interrupt while the THR is empty raises it at once.
      if ((value & kIerThre) && !(ier_ & kIerThre)) thr_ipending_ = true;
      ier_ = value & 0x0f;
      update_irq_locked();
      return;
    case kIirFcr:
      fcr_ = value;
      if (value & 0x02) rx_.clear();  // clear the receive FIFO
      update_irq_locked();
      return;
    case kLcr:
      lcr_ = value;
      return;
    case kMcr:
      mcr_ = value & 0x1f;
      return;
    case kScr:
      scr_ = value;
      return;
    default:
      return;  // LSR, MSR: read-only
  }
}

size_t Uart8250::push_input(const uint8_t* data, size_t len) {
  std::lock_guard lk(mu_);
  size_t n = std::min(len, kFifoSize - rx_.size());
  rx_.insert(rx_.end(), data, data + n);
  if (n) update_irq_locked();
  return n;
}

size_t Uart8250::input_space() const {
  std::lock_guard lk(mu_);
  return kFifoSize - rx_.size();
}

Uart8250::State Uart8250::save() const {
  std::lock_guard lk(mu_);
  State s{};
  s.ier = ier_;
  s.lcr = lcr_;
  s.mcr = mcr_;
  s.scr = scr_;
  s.dll = dll_;
  s.dlm = dlm_;
  s.fcr = fcr_;
  s.thr_ipending = thr_ipending_;
  s.irq_level = irq_level_;
  s.rx_len = uint8_t(rx_.size());
  std::copy(rx_.begin(), rx_.end(), s.rx);
  return s;
}

void Uart8250::load(const State& s) {
  if (s.rx_len > kFifoSize || s.ier > 0x0f || s.mcr > 0x1f || s.thr_ipending > 1 || s.irq_level > 1)
    throw Error(ErrorKind::kIntegrity, "snapshot: the UART's saved registers are impossible");
  std::lock_guard lk(mu_);
  ier_ = s.ier;
  lcr_ = s.lcr;
  mcr_ = s.mcr;
  scr_ = s.scr;
  dll_ = s.dll;
  dlm_ = s.dlm;
  fcr_ = s.fcr;
  thr_ipending_ = s.thr_ipending;
  irq_level_ = s.irq_level;
  rx_.assign(s.rx, s.rx + s.rx_len);
}

void Uart8250::update_irq_locked() {
  bool level = ((ier_ & kIerRx) && !rx_.empty()) || ((ier_ & kIerThre) && thr_ipending_);
  // OUT2 gates the interrupt line on PC hardware; Linux sets it before enabling interrupts.
  if (!(mcr_ & 0x08)) level = false;
  if (level != irq_level_) {
    irq_level_ = level;
    if (irq_) irq_(level);
  }
}

}  // namespace img2vm::vm
