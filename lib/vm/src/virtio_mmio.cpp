#include "virtio_mmio.hpp"

#include <algorithm>
#include <cstdio>
#include <cstring>

#include "img2vm/base/error.hpp"

namespace img2vm::vm {

namespace {
enum : uint64_t {
  kRegMagic = 0x000,
  kRegVersion = 0x004,
  kRegDeviceId = 0x008,
  kRegVendorId = 0x00c,
  kRegDeviceFeatures = 0x010,
  kRegDeviceFeaturesSel = 0x014,
  kRegDriverFeatures = 0x020,
  kRegDriverFeaturesSel = 0x024,
  kRegQueueSel = 0x030,
  kRegQueueNumMax = 0x034,
  kRegQueueNum = 0x038,
  kRegQueueReady = 0x044,
  kRegQueueNotify = 0x050,
  kRegInterruptStatus = 0x060,
  kRegInterruptAck = 0x064,
  kRegStatus = 0x070,
  kRegQueueDescLow = 0x080,
  kRegQueueDescHigh = 0x084,
  kRegQueueDriverLow = 0x090,
  kRegQueueDriverHigh = 0x094,
  kRegQueueDeviceLow = 0x0a0,
  kRegQueueDeviceHigh = 0x0a4,
  kRegConfigGeneration = 0x0fc,
  kRegConfig = 0x100,
};
constexpr uint32_t kVendorId = 0x4d56;  // "VM"
// Sets 32-bit word `word` (0: bits 0-31, 1: bits 32-63) of `v`.
void set_word(uint64_t& v, unsigned word, uint32_t x) {
  const unsigned shift = 32 * word;
  v = (v & ~(0xffffffffull << shift)) | (uint64_t{x} << shift);
}
// The ring address a Queue{Desc,Driver,Device}{Low,High} register sets: the low word's register
// is at a multiple of 8, the high word's 4 bytes above it.
uint64_t SplitQueue::*queue_address(uint64_t reg) {
  switch (reg & ~uint64_t{4}) {
    case kRegQueueDescLow:
      return &SplitQueue::desc_addr;
    case kRegQueueDriverLow:
      return &SplitQueue::avail_addr;
    default:
      return &SplitQueue::used_addr;
  }
}
}  // namespace

VirtioMmio::VirtioMmio(const GuestMemory& mem, VirtioDevice& dev, std::function<void()> interrupt)
    : mem_(mem), dev_(dev), interrupt_(std::move(interrupt)), queues_(dev.num_queues()) {}

void VirtioMmio::reset_locked() {
  for (auto& q : queues_) q.reset();
  status_ = queue_sel_ = dev_features_sel_ = drv_features_sel_ = interrupt_status_ = 0;
  driver_features_ = 0;
  broken_.clear();
  dev_.reset();
}

SplitQueue* VirtioMmio::selected_locked() {
  return queue_sel_ < queues_.size() ? &queues_[queue_sel_] : nullptr;
}

uint32_t VirtioMmio::status() const {
  std::lock_guard lk(mu_);
  return status_;
}

std::string VirtioMmio::broken_reason() const {
  std::lock_guard lk(mu_);
  return broken_;
}

void VirtioMmio::read(uint64_t offset, uint8_t* data, unsigned size) {
  std::memset(data, 0, size);
  std::lock_guard lk(mu_);
  if (offset >= kRegConfig) {
    auto cfg = dev_.config();
    uint64_t off = offset - kRegConfig;
    if (size <= 8 && off <= cfg.size() && size <= cfg.size() - off)
      std::memcpy(data, cfg.data() + off, size);
    return;
  }
  if (size != 4 || offset % 4) return;
  uint32_t v = 0;
  SplitQueue* q = selected_locked();
  switch (offset) {
    case kRegMagic:
      v = kMagic;
      break;
    case kRegVersion:
      v = 2;
      break;
    case kRegDeviceId:
      v = dev_.device_id();
      break;
    case kRegVendorId:
      v = kVendorId;
      break;
    case kRegDeviceFeatures:
      v = dev_features_sel_ == 0   ? uint32_t(dev_.features())
          : dev_features_sel_ == 1 ? uint32_t(dev_.features() >> 32)
                                   : 0;
      break;
    case kRegQueueNumMax:
      v = q ? SplitQueue::kMaxSize : 0;
      break;
    case kRegQueueReady:
      v = q && q->ready ? 1 : 0;
      break;
    case kRegInterruptStatus:
      v = interrupt_status_ | (dev_.external_interrupts() && (status_ & kStatusDriverOk) ? 1 : 0);
      break;
    case kRegStatus:
      v = status_;
      break;
    case kRegConfigGeneration:
      v = config_generation_;
      break;
    default:
      break;
  }
  std::memcpy(data, &v, 4);
}

void VirtioMmio::write(uint64_t offset, const uint8_t* data, unsigned size) {
  if (offset >= kRegConfig) return;  // the block config is read-only
  if (size != 4 || offset % 4) return;
  uint32_t v;
  std::memcpy(&v, data, 4);
  bool do_notify = false, raise = false;
  {
    std::lock_guard lk(mu_);
    SplitQueue* q = selected_locked();
    // Queue registers may only change while the queue is not live.
    bool q_writable = q && !q->ready;
    switch (offset) {
      case kRegDeviceFeaturesSel:
        dev_features_sel_ = v;
        break;
      case kRegDriverFeaturesSel:
        drv_features_sel_ = v;
        break;
      case kRegDriverFeatures:
        if (status_ & kStatusFeaturesOk) break;
        if (drv_features_sel_ < 2) set_word(driver_features_, drv_features_sel_, v);
        break;
      case kRegQueueSel:
        queue_sel_ = v;
        break;
      case kRegQueueNum:
        if (q_writable) q->size = uint16_t(v > 0xffff ? 0 : v);
        break;
      case kRegQueueDescLow:
      case kRegQueueDescHigh:
      case kRegQueueDriverLow:
      case kRegQueueDriverHigh:
      case kRegQueueDeviceLow:
      case kRegQueueDeviceHigh:
        if (q_writable) set_word(q->*queue_address(offset), offset & 4 ? 1 : 0, v);
        break;
      case kRegQueueReady:
        if (!q) break;
        if (v == 1 && !q->ready) {
          if (auto why = q->validate(mem_); !why.empty()) {
            broken_ = why;
            status_ |= kStatusNeedsReset;
            break;
          }
          q->ready = true;
        } else if (v == 0) {
          q->ready = false;
        }
        break;
      case kRegQueueNotify:
        do_notify = true;
        break;
      case kRegInterruptAck:
        interrupt_status_ &= ~v;
        break;
      case kRegStatus:
        if (v == 0) {
          reset_locked();
          break;
        }
        if ((v & kStatusFeaturesOk) && !(status_ & kStatusFeaturesOk)) {
          // Accept only features we offered, and insist on VERSION_1 (no legacy layout).
          if ((driver_features_ & ~dev_.features()) || !(driver_features_ & kVirtioFVersion1))
            v &= ~kStatusFeaturesOk;
        }
        if ((v & kStatusDriverOk) && !(status_ & kStatusDriverOk) &&
            (status_ & kStatusFeaturesOk) && !(status_ & kStatusNeedsReset)) {
          if (auto why = dev_.activate(mem_, queues_, driver_features_); !why.empty()) {
            broken_ = why;
            status_ |= kStatusNeedsReset;
            interrupt_status_ |= 2;  // configuration change: the driver looks at status
            raise = true;
          }
        }
        status_ = (status_ & kStatusNeedsReset) | v;
        break;
      default:
        break;
    }
  }
  if (raise && interrupt_) interrupt_();
  if (do_notify) notify();
}

void VirtioMmio::hold() {
  std::lock_guard lk(mu_);
  held_ = true;
}

void VirtioMmio::release() {
  std::lock_guard lk(mu_);
  held_ = false;
}

void VirtioMmio::notify() {
  bool raise = false;
  {
    std::lock_guard lk(mu_);
    if (held_ || !(status_ & kStatusDriverOk) || (status_ & (kStatusNeedsReset | kStatusFailed)))
      return;
    raise = dev_.process_queues(mem_, queues_, driver_features_);
    for (auto& q : queues_) {
      if (q.broken()) {
        broken_ = q.broken_reason();
        status_ |= kStatusNeedsReset;
        interrupt_status_ |= 2;  // configuration change: tells the driver to look at status
        raise = true;
      }
    }
    if (raise) interrupt_status_ |= 1;  // used buffer notification
  }
  if (raise && interrupt_) interrupt_();
}

}  // namespace img2vm::vm

namespace img2vm::vm {

namespace {
Error bad_state(const std::string& why) {
  return Error(ErrorKind::kIntegrity, "virtio-mmio state: " + why);
}
std::string hex(uint64_t v) {
  char b[24];
  std::snprintf(b, sizeof b, "%#llx", static_cast<unsigned long long>(v));
  return b;
}
template <typename T>
void append(std::vector<uint8_t>& out, const T& v) {
  auto p = reinterpret_cast<const uint8_t*>(&v);
  out.insert(out.end(), p, p + sizeof v);
}

void check_shape(const VirtioMmioState& h, const VirtioDevice& dev, size_t queues) {
  if (h.device_id != dev.device_id())
    throw Error(ErrorKind::kUnsupported, "the snapshot's virtio device has type " +
                                             std::to_string(h.device_id) + ", this one " +
                                             std::to_string(dev.device_id()));
  if (h.device_features != dev.features())
    throw Error(ErrorKind::kUnsupported, "the snapshot's virtio device offered features " +
                                             hex(h.device_features) + ", this one offers " +
                                             hex(dev.features()));
  if (h.num_queues != queues)
    throw Error(ErrorKind::kUnsupported, "the snapshot's virtio device has " +
                                             std::to_string(h.num_queues) + " queues, this one " +
                                             std::to_string(queues));
}

void check_registers(const VirtioMmioState& h) {
  if (h.status > 0xff) throw bad_state("device status " + hex(h.status));
  if (h.interrupt_status > 3) throw bad_state("interrupt status " + hex(h.interrupt_status));
  if ((h.status & VirtioMmio::kStatusFeaturesOk) && (h.driver_features & ~h.device_features))
    throw bad_state("driver features " + hex(h.driver_features) + " beyond the offered ones");
  if (std::memchr(h.broken, 0, sizeof h.broken) == nullptr)
    throw bad_state("the broken reason is not terminated");
}

void check_queue(const VirtioQueueState& s, const SplitQueue& q, const GuestMemory& mem, size_t i) {
  const std::string name = "queue " + std::to_string(i) + ": ";
  if (s.ready > 1 || s.broken > 1) throw bad_state(name + "flags out of range");
  if (s.size == 0 || s.size > SplitQueue::kMaxSize || (s.size & (s.size - 1)))
    throw bad_state(name + "size " + std::to_string(s.size) + " is not a power of two up to " +
                    std::to_string(SplitQueue::kMaxSize));
  if (!s.ready) return;
  if (auto why = q.validate(mem); !why.empty()) throw bad_state(name + why);
}
}  // namespace

void throw_state_size(const char* what, size_t got, size_t want) {
  throw Error(ErrorKind::kIntegrity, std::string(what) + " state: " + std::to_string(got) +
                                         " bytes, not " + std::to_string(want));
}

void VirtioDevice::load_state(std::span<const uint8_t> state) {
  if (!state.empty())
    throw Error(ErrorKind::kIntegrity, "virtio device state: " + std::to_string(state.size()) +
                                           " bytes for a device that keeps none");
}

std::vector<uint8_t> VirtioMmio::save() const {
  std::lock_guard lk(mu_);
  VirtioMmioState h;
  h.device_id = dev_.device_id();
  h.num_queues = uint32_t(queues_.size());
  h.device_features = dev_.features();
  h.driver_features = driver_features_;
  h.status = status_;
  h.dev_features_sel = dev_features_sel_;
  h.drv_features_sel = drv_features_sel_;
  h.queue_sel = queue_sel_;
  h.interrupt_status = interrupt_status_;
  h.config_generation = config_generation_;
  std::memcpy(h.broken, broken_.data(), std::min(broken_.size(), sizeof h.broken - 1));
  std::vector<uint8_t> out;
  append(out, h);
  for (const auto& q : queues_) {
    VirtioQueueState s;
    s.desc_addr = q.desc_addr;
    s.avail_addr = q.avail_addr;
    s.used_addr = q.used_addr;
    s.size = q.size;
    s.last_avail = q.last_avail();
    s.used_idx = q.used_idx();
    s.ready = q.ready;
    s.broken = q.broken();
    append(out, s);
  }
  return out;
}

void VirtioMmio::load(std::span<const uint8_t> state) {
  VirtioMmioState h;
  if (state.size() < sizeof h) throw bad_state(std::to_string(state.size()) + " bytes");
  std::memcpy(&h, state.data(), sizeof h);
  check_shape(h, dev_, queues_.size());
  if (state.size() != sizeof h + h.num_queues * sizeof(VirtioQueueState))
    throw bad_state(std::to_string(state.size()) + " bytes for " + std::to_string(h.num_queues) +
                    " queues");
  check_registers(h);
  std::vector<SplitQueue> queues(queues_.size());
  for (size_t i = 0; i < queues.size(); ++i) {
    VirtioQueueState s;
    std::memcpy(&s, state.data() + sizeof h + i * sizeof s, sizeof s);
    SplitQueue& q = queues[i];
    q.size = s.size;
    q.desc_addr = s.desc_addr;
    q.avail_addr = s.avail_addr;
    q.used_addr = s.used_addr;
    q.ready = s.ready;
    check_queue(s, q, mem_, i);
    q.restore(s.last_avail, s.used_idx, s.broken, h.broken);
  }
  std::lock_guard lk(mu_);
  queues_ = std::move(queues);
  status_ = h.status;
  dev_features_sel_ = h.dev_features_sel;
  drv_features_sel_ = h.drv_features_sel;
  queue_sel_ = h.queue_sel;
  driver_features_ = h.driver_features;
  interrupt_status_ = h.interrupt_status;
  config_generation_ = h.config_generation;
  broken_ = h.broken;
}

void VirtioMmio::raise_pending() {
  bool raise;
  {
    std::lock_guard lk(mu_);
    raise = interrupt_status_ != 0;
  }
  if (raise && interrupt_) interrupt_();
}

}  // namespace img2vm::vm
