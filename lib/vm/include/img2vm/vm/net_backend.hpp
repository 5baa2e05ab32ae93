// The interface between a network device (virtio-net, internal to lib/vm) and a network
// backend: user-mode networking through libslirp (net_slirp.hpp) or a tap device (net_tap.hpp).
// A backend moves Ethernet frames; the device owns the guest-facing queues.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <vector>

#include "img2vm/vm/port_forward.hpp"

namespace img2vm::vm {

// What a backend sees of the device. Thread-safe.
class NetDeviceSide {
 public:
  virtual ~NetDeviceSide() = default;
  // A frame for the guest (from the Ethernet header on). The device copies it into a bounded
  // queue and returns true, or drops it and returns false (queue full, frame too large).
  // Does not take the transport's lock: callable from inside NetBackend::send().
  virtual bool receive(std::span<const uint8_t> frame) = 0;
  // True while the device's queue is full because the guest is not taking frames: the backend
  // should stop reading from the host until NetBackend::rx_ready() (nothing is dropped then).
  virtual bool rx_full() const = 0;
  // Moves queued frames into the guest's receive buffers and interrupts it. Takes the
  // transport's lock (and may call NetBackend::send for frames the guest sent meanwhile): call
  // it with no backend lock held, never from inside NetBackend::send().
  virtual void flush_rx() = 0;
};

// A network backend: where the guest's frames go and where frames for it come from.
class NetBackend {
 public:
  virtual ~NetBackend() = default;
  // Connects the device (before any traffic; nullptr detaches).
  virtual void attach(NetDeviceSide* device) = 0;
  // A frame from the guest, from the Ethernet header on, fully checksummed. Called by the
  // device with the transport's lock held, from whichever thread processes the queues.
  virtual void send(std::span<const uint8_t> frame) = 0;
  // The device has room again after rx_full(). May be called with the transport's lock held:
  // must not block or call back into the device.
  virtual void rx_ready() = 0;
  // True when every frame this backend delivers carries correct checksums (libslirp builds
  // them itself), so the device may tell the guest not to verify them.
  virtual bool rx_checksums_valid() const = 0;
  // True when the backend takes and gives frames with the 12-byte virtio_net_hdr in front
  // (send() and NetDeviceSide::receive() then include it) and handles partial checksums and
  // GSO (TCP over IPv4 and IPv6) itself, as a tap device with IFF_VNET_HDR does.
  virtual bool offloads() const { return false; }
  // With offloads: what the guest driver accepts on receive (GUEST_CSUM, GUEST_TSO4/6), so that
  // the backend hands over only such frames. Called by the device whenever its driver's
  // features change, from the thread that processes the queues (the runner's network thread);
  // must not block.
  virtual void set_guest_offloads(bool /*csum*/, bool /*tso4*/, bool /*tso6*/) {}
  // The published ports as set up (a host port 0 replaced by the one chosen).
  virtual std::vector<PortForward> published() const { return {}; }

  // The backend's event loop on the calling thread (the runner's network thread). Besides its
  // own work it watches `watches`: when one's fd is readable its callback runs (with no backend
  // lock held); a callback returning false ends the loop. Throws Error only when it cannot start.
  struct Watch {
    int fd;
    std::function<bool()> on_readable;
  };
  // Runs the loop until a watch callback returns false.
  virtual void run(std::span<const Watch> watches) = 0;
};

}  // namespace img2vm::vm
