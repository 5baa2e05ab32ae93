// Rootless user-mode networking for the guest through libslirp (Debian's libslirp0): a small
// TCP/IP stack in the runner that turns the guest's connections into ordinary host sockets, so
// no privilege, tap device or bridge is needed. It is what qemu's `-netdev user` and podman's
// slirp4netns use.
//
// The guest network (the same as qemu's user networking):
//
//   10.0.2.0/24   the virtual network
//   10.0.2.15     the guest (what slirp's DHCP server hands out first; host forwards go here)
//   10.0.2.2      the gateway, which is also the host: with UserNetConfig::host_loopback a
//                 guest connection to 10.0.2.2:P reaches the host's 127.0.0.1:P
//   10.0.2.3      the DNS server: queries (UDP and TCP port 53) are forwarded to the first
//                 nameserver of the host's /etc/resolv.conf (re-read when it changes)
//
// No IPv6 in the guest network (as docker's default bridge). Outbound connections (and DNS)
// need UserNetConfig::outbound, the host itself needs UserNetConfig::host_loopback: besides
// 10.0.2.2, libslirp would connect the guest to the host's loopback for 127.0.0.0/8, 0.0.0.0/8
// and 255.255.255.255, so those and the rest of 10.0.2.0/24 (but DNS) are filtered the same way
// (src/net_filter.hpp). Published ports (host forwards, TCP and UDP) work either way. With
// outbound on, the guest reaches the host's services on its other (non-loopback) addresses, as
// a docker container can.
//
// Threading: libslirp is not thread-safe (and keeps some state in globals), so every call into
// it holds one process-wide mutex. run() is the event loop (poll() over slirp's sockets, its
// timers, a wake-up eventfd and the caller's watches) on the runner's network thread; send()
// may come from any thread.
#pragma once

#include <memory>
#include <span>
#include <string_view>
#include <vector>

#include "img2vm/vm/net_backend.hpp"
#include "img2vm/vm/port_forward.hpp"

namespace img2vm::vm {

namespace usernet {
inline constexpr std::string_view kNetwork = "10.0.2.0";
inline constexpr unsigned kPrefixLength = 24;
inline constexpr std::string_view kGuest = "10.0.2.15";
inline constexpr std::string_view kGateway = "10.0.2.2";
inline constexpr std::string_view kDns = "10.0.2.3";
}  // namespace usernet

// The user-mode network's policy and published ports.
struct UserNetConfig {
  // The guest may open TCP connections and send UDP (DNS included) to the outside world. Off:
  // only published ports work, and what the guest sends is limited to answering them (a
  // connection it opens is refused with a TCP RST; see src/net_filter.hpp).
  bool outbound = true;
  // 10.0.2.2 (and 127.0.0.0/8, 0.0.0.0/8, 255.255.255.255) reach the host's loopback (podman's
  // allow_host_loopback). Off by default, so services listening on the host's 127.0.0.1 stay
  // private, as with docker.
  bool host_loopback = false;
  // Published ports (`-p`), host side -> guest 10.0.2.15.
  std::vector<PortForward> forwards;
};

// User-mode networking through libslirp: no privilege, NAT to the host's sockets.
class SlirpBackend final : public NetBackend {
 public:
  // Sets up the stack and binds every forward's host socket. Throws Error naming the forward
  // when one cannot be set up (e.g. "host port 8080 is already in use").
  SlirpBackend(const UserNetConfig& config, uint16_t mtu);
  ~SlirpBackend() override;
  SlirpBackend(const SlirpBackend&) = delete;
  SlirpBackend& operator=(const SlirpBackend&) = delete;

  void attach(NetDeviceSide* device) override;
  void send(std::span<const uint8_t> frame) override;
  void rx_ready() override;
  bool rx_checksums_valid() const override { return true; }
  void run(std::span<const Watch> watches) override;

  // The forwards as bound: a host port 0 is replaced by the port the kernel chose.
  std::vector<PortForward> published() const override;

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace img2vm::vm
