// The frame path of a tap device (TapDevice, net_tap.hpp): what runs next to the guest. No
// nftables or device setup here, so a VMM that only carries frames (img2vm-vmm) links none of it.
#include <fcntl.h>
#include <linux/if_tun.h>
#include <net/if.h>  // before linux/if_tun.h: glibc's ifreq
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>

#include "img2vm/base/error.hpp"
#include "img2vm/vm/net_tap.hpp"
#include "virtio_net.hpp"

namespace img2vm::vm {

struct TapDevice::Impl {
  UniqueFd tap;
  UniqueFd wake{::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)};
  std::atomic<NetDeviceSide*> device{nullptr};
  std::vector<PortForward> published;
  std::string name;
};

TapDevice::TapDevice(UniqueFd fd, std::vector<PortForward> published)
    : impl_(std::make_unique<Impl>()) {
  Impl& m = *impl_;
  if (!m.wake) throw_errno("eventfd");
  m.tap = std::move(fd);
  m.published = std::move(published);
  ifreq r{};
  if (!m.tap || ::ioctl(m.tap.get(), TUNGETIFF, &r) != 0)
    throw Error(ErrorKind::kInvalidArgument,
                "the network's file descriptor is not an attached tap device: " +
                    std::string(std::strerror(errno)));
  m.name.assign(r.ifr_name, strnlen(r.ifr_name, IFNAMSIZ));
  const int want = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;
  if ((r.ifr_flags & (IFF_TUN | IFF_TAP | IFF_NO_PI | IFF_VNET_HDR)) != want)
    throw Error(ErrorKind::kInvalidArgument,
                "tap device " + m.name + ": not a tap device with IFF_NO_PI and IFF_VNET_HDR");
  // Frames carry the 12-byte virtio 1.x header; no offloads until the guest takes them.
  int size = int(VirtioNet::kHdrSize);
  if (::ioctl(m.tap.get(), TUNSETVNETHDRSZ, &size) != 0 ||
      ::ioctl(m.tap.get(), TUNSETOFFLOAD, 0u) != 0)
    throw Error(ErrorKind::kIo, "tap device " + m.name + ": cannot set up its virtio-net header: " +
                                    std::strerror(errno));
  int fl = ::fcntl(m.tap.get(), F_GETFL);
  if (fl < 0 || ::fcntl(m.tap.get(), F_SETFL, fl | O_NONBLOCK) != 0)
    throw_errno("tap device " + m.name + ": fcntl");
}

TapDevice::~TapDevice() = default;

int TapDevice::fd() const noexcept { return impl_->tap.get(); }

const std::string& TapDevice::name() const noexcept { return impl_->name; }

std::vector<PortForward> TapDevice::published() const { return impl_->published; }

void TapDevice::attach(NetDeviceSide* device) { impl_->device = device; }

void TapDevice::send(std::span<const uint8_t> frame) {
  // A full device queue or a link that is down drops the frame, as a NIC would.
  (void)!::write(impl_->tap.get(), frame.data(), frame.size());
}

void TapDevice::set_guest_offloads(bool csum, bool tso4, bool tso6) {
  // TSO needs partial checksums. Called on the network thread (whose filter allows this ioctl);
  // a failure leaves the offloads as they were, and the device drops what the guest cannot take.
  unsigned f = csum ? TUN_F_CSUM | (tso4 ? TUN_F_TSO4 : 0) | (tso6 ? TUN_F_TSO6 : 0) : 0;
  (void)::ioctl(impl_->tap.get(), TUNSETOFFLOAD, f);
}

void TapDevice::rx_ready() {
  uint64_t one = 1;
  (void)!::write(impl_->wake.get(), &one, sizeof one);
}

void TapDevice::run(std::span<const Watch> watches) {
  Impl& m = *impl_;
  std::vector<pollfd> pfds(2 + watches.size());
  std::vector<uint8_t> buf(VirtioNet::kHdrSize + VirtioNet::kMaxGsoFrame + 64);
  for (;;) {
    NetDeviceSide* dev = m.device.load();
    // While the guest takes no frames, leave them in the device's queue (the host kernel
    // drops beyond it, as a full NIC ring would) instead of reading and dropping here.
    const bool paused = dev && dev->rx_full();
    pfds[0] = {m.wake.get(), POLLIN, 0};
    pfds[1] = {paused ? -1 : m.tap.get(), POLLIN, 0};
    for (size_t i = 0; i < watches.size(); ++i) pfds[2 + i] = {watches[i].fd, POLLIN, 0};
    if (::poll(pfds.data(), pfds.size(), -1) < 0) {
      if (errno == EINTR) continue;
      throw Error(ErrorKind::kInternal, "tap network: poll: " + std::string(std::strerror(errno)));
    }
    if (pfds[0].revents & POLLIN) {
      uint64_t v;
      (void)!::read(m.wake.get(), &v, sizeof v);
    }
    if (pfds[1].revents & POLLIN) {
      bool delivered = false;
      for (int i = 0; i < 64; ++i) {
        dev = m.device.load();
        if (dev && dev->rx_full()) break;
        ssize_t n = ::read(m.tap.get(), buf.data(), buf.size());
        if (n <= 0) break;
        if (size_t(n) < VirtioNet::kHdrSize + VirtioNet::kEthHeader || !dev)
          continue;  // the device checks the rest
        delivered |= dev->receive(std::span<const uint8_t>(buf.data(), size_t(n)));
      }
      if (delivered && (dev = m.device.load())) dev->flush_rx();
    }
    for (size_t i = 0; i < watches.size(); ++i)
      if (pfds[2 + i].revents & (POLLIN | POLLERR | POLLHUP))
        if (!watches[i].on_readable()) return;
  }
}

void TapShapeBackend::run(std::span<const Watch> watches) {
  std::vector<pollfd> pfds(watches.size());
  for (;;) {
    for (size_t i = 0; i < watches.size(); ++i) pfds[i] = {watches[i].fd, POLLIN, 0};
    if (::poll(pfds.data(), pfds.size(), -1) < 0) {
      if (errno == EINTR) continue;
      throw Error(ErrorKind::kInternal, "network: poll: " + std::string(std::strerror(errno)));
    }
    for (size_t i = 0; i < watches.size(); ++i)
      if ((pfds[i].revents & (POLLIN | POLLHUP | POLLERR)) && !watches[i].on_readable()) return;
  }
}

}  // namespace img2vm::vm
