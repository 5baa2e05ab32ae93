#include "virtio_net.hpp"

#include <algorithm>
#include <cstring>

#include "img2vm/base/error.hpp"

namespace img2vm::vm {

namespace {
void put_le16(uint8_t* p, uint16_t v) {
  p[0] = uint8_t(v);
  p[1] = uint8_t(v >> 8);
}
uint16_t le16(const uint8_t* p) { return uint16_t(p[0] | p[1] << 8); }
}  // namespace

VirtioNet::VirtioNet(NetBackend& backend, std::array<uint8_t, 6> mac, uint16_t mtu)
    : backend_(backend),
      mtu_(mtu),
      checksums_valid_(backend.rx_checksums_valid()),
      offloads_(backend.offloads()) {
  if (mtu < kMinMtu || mtu > kMaxMtu)
    throw Error(ErrorKind::kInvalidArgument, "network MTU " + std::to_string(mtu) + " is outside " +
                                                 std::to_string(kMinMtu) + "-" +
                                                 std::to_string(kMaxMtu));
  std::memcpy(config_.data(), mac.data(), 6);
  put_le16(config_.data() + 6, kStatusLinkUp);
  put_le16(config_.data() + 8, 1);  // max_virtqueue_pairs (meaningful only with MQ)
  put_le16(config_.data() + 10, mtu);
  tx_buf_.reserve(kHdrSize + max_any_frame());
  backend_.attach(this);
}

VirtioNet::~VirtioNet() { backend_.attach(nullptr); }

uint64_t VirtioNet::features() const {
  uint64_t f = kVirtioFVersion1 | kFeatureMac | kFeatureMtu | kFeatureStatus | kFeatureMrgRxbuf;
  if (offloads_)
    f |= kFeatureCsum | kFeatureGuestCsum | kFeatureHostTso4 | kFeatureHostTso6 |
         kFeatureGuestTso4 | kFeatureGuestTso6;
  else if (checksums_valid_)
    f |= kFeatureGuestCsum;
  return f;
}

bool VirtioNet::header_ok(std::span<const uint8_t> hf, bool csum, bool tso4, bool tso6) const {
  if (hf.size() < kHdrSize + kEthHeader) return false;
  const uint8_t flags = hf[0], gso = hf[1];
  const size_t len = hf.size() - kHdrSize;
  if (flags & ~(kHdrFNeedsCsum | kHdrFDataValid)) return false;
  if (flags & kHdrFNeedsCsum) {
    if (!csum) return false;
    if (size_t(le16(hf.data() + 6)) + le16(hf.data() + 8) + 2 > len)
      return false;  // csum_start + csum_offset
  }
  switch (gso) {
    case kGsoNone:
      return len <= max_frame();
    case kGsoTcpV4:
    case kGsoTcpV6:
      // A segment of up to 64 KiB for the other side to cut into gso_size pieces.
      return (gso == kGsoTcpV4 ? tso4 : tso6) && (flags & kHdrFNeedsCsum) &&
             le16(hf.data() + 4) != 0 && len <= kMaxGsoFrame;
    default:
      return false;  // UDP fragmentation, ECN: not offered
  }
}

VirtioNetStats VirtioNet::stats() const {
  VirtioNetStats s;
  s.tx_frames = tx_frames_;
  s.tx_dropped = tx_dropped_;
  s.rx_frames = rx_frames_;
  s.rx_dropped = rx_dropped_;
  s.bad_chains = bad_chains_;
  return s;
}

bool VirtioNet::process(const GuestMemory&, SplitQueue&) { return false; }

bool VirtioNet::process_queues(const GuestMemory& mem, std::span<SplitQueue> queues,
                               uint64_t features) {
  if (queues.size() < 2) return false;
  bool used = false;
  // Once per feature change (a load on the hot path, the exchange only when it differs).
  if (offloads_ && told_features_.load(std::memory_order_relaxed) != features &&
      told_features_.exchange(features) != features)
    backend_.set_guest_offloads(features & kFeatureGuestCsum, features & kFeatureGuestTso4,
                                features & kFeatureGuestTso6);
  // Transmit first: frames the backend answers at once (ARP, a refused connection) are then
  // delivered in the same pass.
  if (queues[kTxQueue].ready) used |= transmit(mem, queues[kTxQueue], features);
  if (queues[kRxQueue].ready) used |= deliver(mem, queues[kRxQueue], features);
  return used;
}

void VirtioNet::reset() {
  bool wake;
  {
    std::lock_guard lk(pending_mu_);
    pending_.clear();
    pending_bytes_ = 0;
    wake = backend_waiting_;
    backend_waiting_ = false;
  }
  if (wake) backend_.rx_ready();
}

bool VirtioNet::transmit(const GuestMemory& mem, SplitQueue& q, uint64_t features) {
  bool used = false;
  const uint64_t limit = kHdrSize + max_any_frame();
  while (auto chain = q.pop(mem)) {
    used = true;
    bool ok = chain->error.empty();
    uint64_t total = 0;
    for (const auto& e : chain->elems) {
      if (e.device_writable) ok = false;  // a transmit buffer is read by the device only
      total += e.len;
    }
    if (!ok) {
      ++bad_chains_;
      ++tx_dropped_;
    } else if (total < kHdrSize + kEthHeader || total > limit) {
      ++tx_dropped_;  // runt or larger than the MTU allows
    } else {
      tx_buf_.resize(total);
      uint64_t off = 0;
      for (const auto& e : chain->elems) {
        mem.read(e.addr, tx_buf_.data() + off, e.len);  // inside guest memory: checked by pop()
        off += e.len;
      }
      // Only the offloads negotiated: anything else would go out wrong, so it is dropped.
      const bool ok_hdr =
          offloads_ ? header_ok(tx_buf_, features & kFeatureCsum, features & kFeatureHostTso4,
                                features & kFeatureHostTso6)
                    : tx_buf_[0] == 0 && tx_buf_[1] == kGsoNone && total <= kHdrSize + max_frame();
      if (!ok_hdr) {
        ++tx_dropped_;
      } else {
        ++tx_frames_;
        backend_.send(offloads_ ? std::span<const uint8_t>(tx_buf_)
                                : std::span<const uint8_t>(tx_buf_).subspan(kHdrSize));
      }
    }
    q.add_used(mem, chain->head, 0);
  }
  if (used) q.publish_used(mem);
  return used;
}

bool VirtioNet::deliver(const GuestMemory& mem, SplitQueue& q, uint64_t features) {
  const bool mergeable = features & kFeatureMrgRxbuf;
  // DATA_VALID only for a driver that took GUEST_CSUM (with offloads the backend's header may carry
  // it).
  const bool data_valid = (checksums_valid_ || offloads_) && (features & kFeatureGuestCsum);
  bool used = false;
  for (;;) {
    std::vector<uint8_t> frame;
    {
      std::lock_guard lk(pending_mu_);
      if (pending_.empty()) break;
      frame = std::move(pending_.front());
      pending_.pop_front();
      pending_bytes_ -= frame.size();
    }
    if (offloads_ && !header_ok(frame, features & kFeatureGuestCsum, features & kFeatureGuestTso4,
                                features & kFeatureGuestTso6)) {
      ++rx_dropped_;  // an offload the driver did not take (it renegotiated meanwhile)
      continue;
    }
    if (!deliver_one(mem, q, frame, mergeable, data_valid, used)) {
      std::lock_guard lk(pending_mu_);
      pending_bytes_ += frame.size();
      pending_.push_front(std::move(frame));  // waits for more buffers, still first in line
      break;
    }
  }
  bool wake = false;
  {
    std::lock_guard lk(pending_mu_);
    if (backend_waiting_ && pending_.size() <= kMaxPendingFrames / 2 &&
        pending_bytes_ <= kMaxPendingBytes / 2) {
      backend_waiting_ = false;
      wake = true;
    }
  }
  if (wake) backend_.rx_ready();
  return used;
}

bool VirtioNet::deliver_one(const GuestMemory& mem, SplitQueue& q, std::span<const uint8_t> frame,
                            bool mergeable, bool data_valid, bool& used) {
  // With offloads the frame comes with its header (flags and GSO fields kept as they are).
  const std::span<const uint8_t> body = offloads_ ? frame.subspan(kHdrSize) : frame;
  const uint64_t need = kHdrSize + body.size();
  rx_chains_.clear();
  uint64_t cap = 0;
  while (cap < need) {
    if (rx_chains_.size() >= q.size) {
      // The whole ring cannot hold this frame (tiny buffers): drop it, keep the buffers.
      q.undo_pop(uint16_t(rx_chains_.size()));
      ++rx_dropped_;
      return true;
    }
    auto c = q.pop(mem);
    if (!c) {
      // Out of buffers (or the ring is broken): give back what was taken and wait.
      q.undo_pop(uint16_t(rx_chains_.size()));
      return false;
    }
    bool bad = !c->error.empty();
    uint64_t ccap = 0;
    for (const auto& e : c->elems) {
      if (!e.device_writable) bad = true;
      ccap += e.len;
    }
    // The header goes whole into the first buffer; every further buffer must take something.
    if (ccap < (rx_chains_.empty() ? kHdrSize : 1)) bad = true;
    if (bad) {
      // A malformed receive buffer: return it, and those taken for this frame, empty; drop
      // the frame.
      for (const auto& ch : rx_chains_) q.add_used(mem, ch.head, 0);
      q.add_used(mem, c->head, 0);
      q.publish_used(mem);
      ++bad_chains_;
      ++rx_dropped_;
      used = true;
      return true;
    }
    cap += ccap;
    rx_chains_.push_back(std::move(*c));
    if (!mergeable && cap < need) {
      // Without mergeable buffers a frame takes exactly one chain: this one is too small for
      // it (a smaller frame may fit), so keep it and drop the frame.
      q.undo_pop(1);
      ++rx_dropped_;
      return true;
    }
  }

  uint8_t hdr[kHdrSize] = {};
  if (offloads_) {
    std::memcpy(hdr, frame.data(), kHdrSize);
    if (!data_valid) hdr[0] &= uint8_t(~kHdrFDataValid);
  } else
    hdr[0] = data_valid ? kHdrFDataValid : 0;
  put_le16(hdr + 10, mergeable ? uint16_t(rx_chains_.size()) : uint16_t{1});  // num_buffers
  // Scatter header + frame over the chains' buffers in order, filling each completely.
  uint64_t off = 0;
  for (const auto& ch : rx_chains_) {
    uint32_t written = 0;
    for (const auto& e : ch.elems) {
      if (off == need) break;
      uint64_t n = std::min<uint64_t>(e.len, need - off);
      uint8_t* dst = mem.ptr(e.addr, n);  // inside guest memory: checked by pop()
      for (uint64_t done = 0; done < n;) {
        uint64_t pos = off + done;
        const uint8_t* src = pos < kHdrSize ? hdr + pos : body.data() + (pos - kHdrSize);
        uint64_t avail = pos < kHdrSize ? kHdrSize - pos : need - pos;
        uint64_t k = std::min(avail, n - done);
        std::memcpy(dst + done, src, k);
        done += k;
      }
      off += n;
      written += uint32_t(n);
    }
    q.add_used(mem, ch.head, written);
  }
  q.publish_used(mem);
  ++rx_frames_;
  used = true;
  return true;
}

std::vector<uint8_t> VirtioNet::save_state() const {
  State st;
  std::memcpy(st.mac, config_.data(), 6);
  st.mtu = mtu_;
  return device_state_bytes(st);
}

void VirtioNet::load_state(std::span<const uint8_t> state) {
  const auto st = device_state_from<State>(state, "virtio-net");
  if (st.mtu != mtu_)
    throw Error(ErrorKind::kUnsupported, "the snapshot's NIC had MTU " + std::to_string(st.mtu) +
                                             ", this one " + std::to_string(mtu_));
}

bool VirtioNet::receive(std::span<const uint8_t> frame) {
  const size_t hdr = offloads_ ? kHdrSize : 0;
  if (frame.size() < hdr + kEthHeader || frame.size() > hdr + max_any_frame()) {
    ++rx_dropped_;
    return false;
  }
  std::lock_guard lk(pending_mu_);
  if (pending_.size() >= kMaxPendingFrames || pending_bytes_ + frame.size() > kMaxPendingBytes) {
    backend_waiting_ = true;
    ++rx_dropped_;
    return false;
  }
  pending_.emplace_back(frame.begin(), frame.end());
  pending_bytes_ += frame.size();
  return true;
}

bool VirtioNet::rx_full() const {
  std::lock_guard lk(pending_mu_);
  // Full when one more maximum-size frame might not fit.
  bool full = pending_.size() >= kMaxPendingFrames ||
              pending_bytes_ + kHdrSize + max_any_frame() > kMaxPendingBytes;
  if (full) backend_waiting_ = true;
  return full;
}

void VirtioNet::flush_rx() {
  {
    std::lock_guard lk(pending_mu_);
    if (pending_.empty()) return;
  }
  if (kick_) kick_();
}

}  // namespace img2vm::vm
