#include "virtio_fs.hpp"

#include <sys/eventfd.h>
#include <unistd.h>

#include <cstring>
#include <utility>

#include "img2vm/base/error.hpp"

namespace img2vm::vm {

VirtioFs::VirtioFs(VhostUserFrontend backend, std::string tag, unsigned request_queues)
    : backend_(std::move(backend)), tag_(std::move(tag)) {
  if (tag_.empty() || tag_.size() > kTagSize || tag_.find('\0') != std::string::npos)
    throw Error(ErrorKind::kInvalidArgument,
                "virtio-fs tag must be 1 to 36 bytes without NUL: '" + tag_ + "'");
  // The queue count is bounded by the vhost-user ring index (8 bits in SET_VRING_KICK/CALL).
  if (request_queues == 0 || request_queues > 16)
    throw Error(ErrorKind::kInvalidArgument, "virtio-fs takes 1 to 16 request queues");
  uint64_t offered;
  try {
    offered = backend_.handshake();
  } catch (const Error& e) {
    throw e.with_context("virtio-fs '" + tag_ + "'");
  }
  if (!(offered & kVirtioFVersion1))
    throw Error(ErrorKind::kUnsupported,
                backend_.name() + ": the backend lacks VIRTIO_F_VERSION_1");
  features_ = offered & (kVirtioFVersion1 | kFeatureIndirectDesc | kFeatureEventIdx);
  std::memcpy(config_.data(), tag_.data(), tag_.size());
  const uint32_t n = request_queues;  // little-endian host
  std::memcpy(config_.data() + kTagSize, &n, sizeof n);
  for (unsigned i = 0; i < 1 + request_queues; ++i) {
    UniqueFd k(::eventfd(0, EFD_CLOEXEC));
    if (!k) throw_errno("eventfd");
    kicks_.push_back(std::move(k));
  }
  started_.assign(kicks_.size(), false);
}

bool VirtioFs::process(const GuestMemory&, SplitQueue&) { return false; }

// A QueueNotify that reached the transport (no ioeventfd caught it): passed on to the backend.
bool VirtioFs::process_queues(const GuestMemory&, std::span<SplitQueue> queues, uint64_t) {
  for (size_t i = 0; i < queues.size() && i < kicks_.size(); ++i) {
    if (!started_[i]) continue;
    uint64_t one = 1;
    (void)!::write(kicks_[i].get(), &one, sizeof one);
  }
  return false;
}

std::string VirtioFs::activate(const GuestMemory& mem, std::span<SplitQueue> queues,
                               uint64_t features) {
  if (mem.fd() < 0) return "virtio-fs '" + tag_ + "': guest memory is not shared";
  if (call_fd_ < 0) return "virtio-fs '" + tag_ + "': no interrupt eventfd";
  try {
    backend_.set_features(features);
    const uint64_t host = reinterpret_cast<uint64_t>(mem.host_base());
    const VhostMemRegion ram{0, mem.size(), host, 0, mem.fd()};
    backend_.set_mem_table({&ram, 1});
    for (unsigned i = 0; i < queues.size() && i < kicks_.size(); ++i) {
      const SplitQueue& q = queues[i];
      if (!q.ready) continue;
      // The transport validated the rings when the driver made the queue ready.
      if (!q.validate(mem).empty()) return "virtio-fs '" + tag_ + "': " + q.validate(mem);
      backend_.set_vring_num(i, q.size);
      backend_.set_vring_base(i, 0);
      backend_.set_vring_addr(i, host + q.desc_addr, host + q.used_addr, host + q.avail_addr);
      backend_.set_vring_kick(i, kicks_[i].get());
      backend_.set_vring_call(i, call_fd_);
      started_[i] = true;
      backend_.set_vring_enable(i, true);
    }
  } catch (const Error& e) {
    return e.what();
  }
  return {};
}

void VirtioFs::reset() {
  reset_error_.clear();
  for (unsigned i = 0; i < started_.size(); ++i) {
    if (!started_[i]) continue;
    started_[i] = false;
    try {
      backend_.get_vring_base(i);
    } catch (const Error& e) {
      if (reset_error_.empty()) reset_error_ = e.what();
    }
  }
}

}  // namespace img2vm::vm
