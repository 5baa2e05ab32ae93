// The tap backend: the guest's NIC is a tap device on the host, so its frames go through the
// host kernel's own network stack (routing, conntrack, NAT) at kernel speed. Needs
// CAP_NET_ADMIN (root) to create the device and configure the host side; the rootless default
// is user-mode networking (net_slirp.hpp).
//
// Two ways to use it:
//
//  * Managed (TapNetConfig::name empty, or a name no device has yet): the backend creates a
//    non-persistent tap device ("img2vm0", "img2vm1", ... or the given name), gives it the host
//    end of a /30 of its own from 10.200.0.0/16 (host .1, guest .2: every VM on a subnet of its
//    own, as Firecracker's examples do), switches IPv6 off on it, and installs two nftables
//    tables named `img2vm_<device>` holding every rule the VM needs:
//      - from the guest (`netdev` table, on the device's ingress, before the host's stack sees a
//        frame): only ARP and IPv4 from the guest's own MAC (TapNetConfig::guest_mac) and
//        address, to no loopback, 0.0.0.0/8, multicast or broadcast address; no IPv6, no
//        spoofed sources (also dropped by strict reverse-path filtering on the device);
//    and in the `ip` table:
//      - outbound (TapNetConfig::outbound): the guest's traffic is masqueraded behind the
//        host's address on the way out; off: only replies to published ports leave the guest;
//      - published ports: DNAT from the host's address(es) (and its loopback, as docker's
//        userland-proxy-less mode does: route_localnet on the device, only when a port is
//        published on 0.0.0.0 or 127.0.0.0/8, plus a masquerade) to the guest;
//      - isolation: nothing reaches the guest except replies and published ports, the guest
//        reaches no host service (only the gateway's ping), and no other VM's subnet.
//    IPv4 forwarding is switched on while managed VMs run (docker does the same); when it was
//    off, the last one to end switches it off again (the table `ip img2vmfwd` marks that). On exit
//    the tables are deleted and the device, being non-persistent, disappears with its file
//    descriptor, also when the process is killed; tables left by a killed runner are removed
//    by the next managed tap backend (its device no longer exists).
//
//  * Existing (TapNetConfig::name names a device that exists, e.g. a persistent tap made with
//    `ip tuntap add NAME mode tap user USER`): the backend only attaches to it, which an
//    unprivileged owner of the device may do. The host side is the administrator's: the
//    device's IPv4 address is the guest's gateway and the guest takes the next address of that
//    subnet. No rules are installed, so ports cannot be published this way.
//
// Frames cross the device with a virtio_net_hdr (IFF_VNET_HDR), so the guest's partial
// checksums and TCP segments of up to 64 KiB go to the host kernel as they are, and the host's
// come to the guest the same way once its driver takes them (TUNSETOFFLOAD).
//
// The frame path alone is TapDevice: an open tap device, whatever made it, carried with no
// privilege. `img2vm run --network tap` sets the host side up with a TapBackend as root and
// hands its descriptor (device_fd()) to img2vm-vmm, which drops every privilege and runs the
// NIC on a TapDevice over it (NicConfig::tap, machine.hpp).
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "img2vm/base/fd.hpp"
#include "img2vm/vm/net_backend.hpp"
#include "img2vm/vm/port_forward.hpp"

namespace img2vm::vm {

namespace tapnet {
inline constexpr std::string_view kPool = "10.200.0.0";  // managed subnets: /30s of this /16
inline constexpr unsigned kPoolPrefixLength = 16;
inline constexpr std::string_view kDevicePrefix = "img2vm";
inline constexpr std::string_view kTablePrefix = "img2vm_";
// Whether img2vm may create a device of this name: one its nftables rules can name unquoted
// (a letter, then letters, digits, '_', '.' or '-').
constexpr bool valid_device_name(std::string_view name) {
  auto letter = [](char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); };
  if (name.empty() || !letter(name[0])) return false;
  for (char c : name)
    if (!letter(c) && !(c >= '0' && c <= '9') && c != '_' && c != '.' && c != '-') return false;
  return true;
}
}  // namespace tapnet

// The tap network to set up: device name, addresses, policy, published ports.
struct TapNetConfig {
  // Empty: a managed device with a free "img2vmN" name. Otherwise the device to attach to when
  // it exists, or the name of the managed device to create.
  std::string name;
  bool outbound = true;               // managed only: the guest may reach the outside world
  std::vector<PortForward> forwards;  // managed only: published ports (host -> guest)
  // Managed only: the guest NIC's MAC (NicConfig::mac); frames from any other are dropped.
  std::array<uint8_t, 6> guest_mac = {0x52, 0x54, 0x00, 0x12, 0x34, 0x56};
};

// What the guest is told about its network (its init configures eth0 with it).
struct TapNetInfo {
  std::string device;    // the tap device's name on the host
  bool managed = false;  // created and configured by the backend
  std::string host_ip;   // the host end: the guest's gateway
  std::string guest_ip;  // the guest's address
  unsigned prefix_length = 0;
  std::string table;  // the nftables `ip` table (managed), e.g. "ip img2vm_img2vm0"; a
                      // `netdev` table of the same name filters what the guest sends
};

// The frames of an open tap device (made with IFF_TAP | IFF_NO_PI | IFF_VNET_HDR), whose host
// side someone else has set up; needs no privilege.
class TapDevice final : public NetBackend {
 public:
  // Takes `fd`: checks that it is such a device, sets its 12-byte virtio-net header (no
  // offloads until the guest's driver takes them) and non-blocking mode. `published`: the ports
  // the host side publishes for the guest, for published(). Throws Error naming the device.
  explicit TapDevice(UniqueFd fd, std::vector<PortForward> published = {});
  ~TapDevice() override;
  TapDevice(const TapDevice&) = delete;
  TapDevice& operator=(const TapDevice&) = delete;

  // The device's descriptor (owned by this object).
  int fd() const noexcept;
  const std::string& name() const noexcept;  // the device's name on the host

  void attach(NetDeviceSide* device) override;
  void send(std::span<const uint8_t> frame) override;
  void rx_ready() override;
  bool rx_checksums_valid() const override { return false; }
  bool offloads() const override { return true; }
  void set_guest_offloads(bool csum, bool tso4, bool tso6) override;
  void run(std::span<const Watch> watches) override;
  std::vector<PortForward> published() const override;

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

// A tap device whose host side img2vm sets up (addresses, routes, nftables NAT and forwards).
class TapBackend final : public NetBackend {
 public:
  // Creates or attaches the device and configures the host side (managed). Throws Error naming
  // the device and the step that failed (no CAP_NET_ADMIN, a name in use by another kind of
  // device, an existing device without an IPv4 address, forwards on an existing device, no
  // free subnet, nftables refusing the rules); whatever was set up before is undone.
  TapBackend(const TapNetConfig& config, uint16_t mtu);
  ~TapBackend() override;  // removes the rules and the device (managed)
  TapBackend(const TapBackend&) = delete;
  TapBackend& operator=(const TapBackend&) = delete;

  // What was set up: device, subnet, addresses.
  const TapNetInfo& info() const noexcept;
  // The device's descriptor (not owned), for a process that runs the VM without privileges: it
  // keeps the device alive as long as it has it open; the rules stay until this object goes.
  int device_fd() const noexcept;

  void attach(NetDeviceSide* device) override;
  void send(std::span<const uint8_t> frame) override;
  void rx_ready() override;
  bool rx_checksums_valid() const override { return false; }
  bool offloads() const override { return true; }
  void set_guest_offloads(bool csum, bool tso4, bool tso6) override;
  void run(std::span<const Watch> watches) override;
  std::vector<PortForward> published() const override;

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

// A NIC backend of a tap device's kind (offloads, no checksums done for the guest) with no
// device behind it: what a snapshot of a machine with a tap network is taken with, so that its
// guest's driver negotiates the features a tap device offers, with no privilege and no device
// on the host. Whatever the guest sends is dropped and nothing arrives (the init configures no
// interface before the snapshot point); the run that resumes the snapshot has a real one.
class TapShapeBackend final : public NetBackend {
 public:
  void attach(NetDeviceSide*) override {}
  void send(std::span<const uint8_t>) override { ++dropped_; }
  void rx_ready() override {}
  bool rx_checksums_valid() const override { return false; }
  bool offloads() const override { return true; }
  // Only the watches: nothing of its own to do.
  void run(std::span<const Watch> watches) override;
  uint64_t dropped() const noexcept { return dropped_; }

 private:
  std::atomic<uint64_t> dropped_{0};
};

// Deletes the nftables tables of managed tap devices that no longer exist (left by a runner
// that was killed); returns their names. Needs CAP_NET_ADMIN. TapBackend calls it itself.
std::vector<std::string> remove_stale_tap_rules();

}  // namespace img2vm::vm
