#include "virtio_blk.hpp"

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "img2vm/base/error.hpp"

namespace img2vm::vm {

namespace {
constexpr uint32_t kSegMax = SplitQueue::kMaxSize - 2;
constexpr uint64_t kIdLen = 20;
}  // namespace

VirtioBlk::VirtioBlk(std::unique_ptr<DiskView> view, std::string id)
    : view_(std::move(view)), read_only_(view_->read_only()), id_(std::move(id)) {
  size_ = view_->size() - view_->size() % kSectorSize;
  uint64_t cap = capacity_sectors();
  std::memcpy(config_.data(), &cap, 8);
  uint32_t size_max = 0, seg_max = kSegMax;
  std::memcpy(config_.data() + 8, &size_max, 4);
  std::memcpy(config_.data() + 12, &seg_max, 4);
}

uint64_t VirtioBlk::features() const {
  return kVirtioFVersion1 | kFeatureFlush | kFeatureSegMax | (read_only_ ? kFeatureRo : 0);
}

bool VirtioBlk::process(const GuestMemory& mem, SplitQueue& queue) {
  bool used = false;
  while (auto chain = queue.pop(mem)) {
    uint32_t written = chain->error.empty() ? handle(mem, *chain) : 0;
    queue.push_used(mem, chain->head, written);
    used = true;
  }
  return used;
}

std::vector<uint8_t> VirtioBlk::save_state() const {
  State st;
  st.capacity_sectors = capacity_sectors();
  st.read_only = read_only_;
  return device_state_bytes(st);
}

void VirtioBlk::load_state(std::span<const uint8_t> state) {
  const auto st = device_state_from<State>(state, "virtio-blk");
  if (st.capacity_sectors != capacity_sectors())
    throw Error(ErrorKind::kUnsupported,
                "the snapshot's disk had " + std::to_string(st.capacity_sectors) +
                    " sectors, this one " + std::to_string(capacity_sectors()));
  if (st.read_only != uint32_t(read_only_))
    throw Error(ErrorKind::kUnsupported, std::string("the snapshot's disk was ") +
                                             (st.read_only ? "read-only" : "writable") +
                                             ", this one is " +
                                             (read_only_ ? "read-only" : "writable"));
}

uint32_t VirtioBlk::handle(const GuestMemory& mem, const DescChain& chain) {
  if (chain.elems.size() < 2) return 0;  // no room for a header and a status: nothing to say
  const DescElem& st = chain.elems.back();
  if (!st.device_writable || st.len == 0) return 0;
  uint32_t written = 0;
  uint8_t status = do_request(mem, chain, written);
  mem.store<uint8_t>(st.addr + st.len - 1, status);  // inside guest memory: checked by pop()
  return written + 1;
}

uint8_t VirtioBlk::do_request(const GuestMemory& mem, const DescChain& chain, uint32_t& written) {
  written = 0;
  const DescElem& hdr = chain.elems.front();
  if (hdr.device_writable || hdr.len < 16) return kStatusIoErr;
  uint32_t type = *mem.load<uint32_t>(hdr.addr);
  uint64_t sector = *mem.load<uint64_t>(hdr.addr + 8);
  const size_t first = 1, last = chain.elems.size() - 1;  // data descriptors: [first, last)

  switch (type) {
    case kTypeIn:
    case kTypeOut: {
      const bool out = type == kTypeOut;
      if (out && read_only_) return kStatusIoErr;
      uint64_t total = 0;
      for (size_t i = first; i < last; ++i) {
        if (chain.elems[i].device_writable == out) return kStatusIoErr;  // wrong direction
        total += chain.elems[i].len;
      }
      if (total % kSectorSize) return kStatusIoErr;
      if (sector > capacity_sectors() || total / kSectorSize > capacity_sectors() - sector)
        return kStatusIoErr;
      uint64_t off = sector * kSectorSize;
      for (size_t i = first; i < last; ++i) {
        const DescElem& e = chain.elems[i];
        uint8_t* p = mem.ptr(e.addr, e.len);
        if (!p || !(out ? view_->write(p, e.len, off) : view_->read(p, e.len, off)))
          return kStatusIoErr;
        off += e.len;
        if (!out) written += e.len;
      }
      return kStatusOk;
    }
    case kTypeFlush:
      if (!view_->flush()) return kStatusIoErr;
      return kStatusOk;
    case kTypeGetId: {
      if (last != first + 1 || !chain.elems[first].device_writable) return kStatusIoErr;
      const DescElem& e = chain.elems[first];
      uint8_t id[kIdLen] = {};
      std::memcpy(id, id_.data(), std::min<size_t>(id_.size(), kIdLen));
      uint32_t n = uint32_t(std::min<uint64_t>(e.len, kIdLen));
      mem.write(e.addr, id, n);
      written = n;
      return kStatusOk;
    }
    default:
      return kStatusUnsupp;
  }
}

}  // namespace img2vm::vm
