// A VM's NIC in a network namespace that a container engine made (podman with CNI or netavark,
// containerd with CNI): the namespace holds loopback and one interface (a veth whose other end
// is on the engine's bridge) with the container's IPv4 address, MAC, MTU and default route. The
// VM takes that interface's place, as Kata Containers' "tcfilter" model does:
//
//  - a tap device is made in the namespace (IFF_TAP | IFF_NO_PI | IFF_VNET_HDR, non-persistent,
//    the interface's MTU, IPv6 off so that the namespace's kernel sends nothing on it);
//  - every frame that arrives on the interface is redirected to the tap device (the guest), and
//    every frame the guest sends to the interface (out to the engine's bridge): an ingress qdisc
//    on each with one u32 filter matching everything and a mirred "egress redirect" action to the
//    other device, so the namespace's own stack sees none of the guest's traffic;
//  - the interface's IPv4 address is removed (the guest owns it now: the namespace must neither
//    answer for it nor send from it); its routes go with it. IPv6 addresses stay (the
//    namespace's stack no longer sees a frame from the link, and nothing in it sends).
//
// The guest's NIC gets the interface's MAC (so the engine's bridge and neighbours' ARP caches
// stay right), and its init the address, prefix length, gateway and MTU read here, the IPv6
// addresses and the other routes. The engine's
// port publishing (DNAT to the container's address), its firewall and container-to-container
// traffic work unchanged: the guest answers where the container would have.
//
// Everything is done on a short-lived thread of its own that enters the namespace (setns), never
// on the caller's: it needs CAP_SYS_ADMIN to enter and CAP_NET_ADMIN in the namespace (root).
// The tap's descriptor then carries frames with no privilege (TapFdConfig, machine.hpp;
// TapDevice, net_tap.hpp), in this process or in img2vm-vmm.
//
// Undo: the tap device disappears with the last descriptor of it (the VMM's), its filter with
// it; the interface's filter then drops what arrives (its target is gone) until the engine
// deletes the namespace. When a NetnsTap is destroyed after the VM has ended (the tap is gone
// once its own descriptor is closed), it restores the namespace as it found it: the
// interface's ingress qdisc and filter removed, its address and routes put back. Destroyed
// while another process still holds the tap (a detached VM's monitor and VMM), it leaves
// everything to that VM, whose monitor restores the namespace when the VM has ended
// (restore_state, restore_netns): before the engine tears the namespace down, so that its CNI
// plugins find the container's address on the interface (the bridge plugin's masquerading rule
// for it goes only then).
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace img2vm::vm {

namespace netns {
// The tap devices made in a namespace: img2vm-tap0 (the kernel picks the number).
inline constexpr std::string_view kTapPrefix = "img2vm-tap";
// What is read from a namespace at most; an engine's holds a few of each.
inline constexpr size_t kMaxLinks = 64;
inline constexpr size_t kMaxAddresses = 256;
inline constexpr size_t kMaxRoutes = 1024;
// What the guest is given at most (guestabi's bounds) and the lines of NetnsLink::not_carried.
inline constexpr size_t kMaxCarriedAddresses6 = 16;
inline constexpr size_t kMaxCarriedRoutes = 64;
inline constexpr size_t kMaxNotCarried = 16;
}  // namespace netns

// An address with its prefix length, and a route to destination/prefix through a gateway (empty:
// on the link), as text (IPv4 dotted quads, IPv6 as inet_ntop(3) writes it).
struct NetnsAddress {
  std::string address;
  unsigned prefix_length = 0;
  friend bool operator==(const NetnsAddress&, const NetnsAddress&) = default;
};
struct NetnsRoute {
  std::string destination;
  unsigned prefix_length = 0;
  std::string gateway;
  friend bool operator==(const NetnsRoute&, const NetnsRoute&) = default;
};

// What the namespace's interface had (the guest takes it over) and the tap made beside it.
struct NetnsLink {
  std::string interface;  // the engine's interface, e.g. "eth0"
  int interface_index = 0;
  std::array<uint8_t, 6> mac{};  // its MAC: the guest NIC's
  unsigned mtu = 0;
  std::string address;  // its IPv4 address (dotted quad)
  unsigned prefix_length = 0;
  std::string gateway;  // the default IPv4 route's gateway (main table); empty: none
  std::string tap;      // the tap device, e.g. "img2vm-tap0"
  int tap_index = 0;
  // The interface's global IPv6 addresses (a dual-stack network's; the guest's link-local one
  // comes from the same MAC) and its routes in the main table besides the kernel's and the
  // default IPv4 one: IPv4 routes, and IPv6 ones with the default ("::"/0), at most
  // kMaxCarriedAddresses6 and kMaxCarriedRoutes. The guest's init sets them up too.
  std::vector<NetnsAddress> addresses6;
  std::vector<NetnsRoute> routes;
  // What the namespace gives a container that the guest does not get, one line each (at most
  // netns::kMaxNotCarried, the last saying how many more): routes with several next hops
  // ("IPv4 route 10.1.0.0/16: 2 next hops"), addresses and routes past the bounds above.
  // Callers warn with these.
  std::vector<std::string> not_carried;
};

// The tap device of a VM in an engine's network namespace, and the tc redirection both ways.
class NetnsTap {
 public:
  // Sets it up in the network namespace at `netns_path` (/run/netns/NAME, /proc/PID/ns/net, the
  // path in an OCI config's linux.namespaces). Throws Error naming the namespace and what is
  // wrong: no such file or not a network namespace, not allowed (no root), no interface up
  // besides loopback or several (each named), one that is not Ethernet, no IPv4 address or
  // several, a tap of an earlier VM still there, or the kernel refusing a step (tc's u32,
  // mirred or ingress support missing). Whatever was done before a failure is undone.
  explicit NetnsTap(const std::filesystem::path& netns_path);
  ~NetnsTap();  // closes the tap; restores the namespace if the VM has ended (above)
  NetnsTap(const NetnsTap&) = delete;
  NetnsTap& operator=(const NetnsTap&) = delete;

  const NetnsLink& info() const noexcept;
  // The tap device's descriptor (owned; close-on-exec, non-blocking): what the NIC is given
  // (TapFdConfig). The device lives as long as some process has it open.
  int device_fd() const noexcept;
  // What restoring the namespace takes (JSON text: the namespace's path, the interface, its
  // address, the routes that went with it, the tap), for a process that outlives this object and
  // holds the tap (a detached VM's monitor): it calls restore_netns() with it once the VM has
  // ended.
  std::string restore_state() const;

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

// Whether the network namespace at `netns_path` holds a tap device of img2vm's: another VM has
// its interface (a pod's infra or pause container, when the pod's containers share its
// namespace). False when it cannot be looked at (NetnsTap then says why).
bool netns_has_vm(const std::filesystem::path& netns_path) noexcept;

// Restores the namespace that NetnsTap::restore_state()'s text names as ~NetnsTap does
// once the tap is gone: the interface's qdisc removed, its address and routes put back. Does
// nothing while the tap is there or when the interface is not the one the state names. Returns
// "" when done (or when nothing was to be done), else why not; never throws.
std::string restore_netns(std::string_view state) noexcept;

}  // namespace img2vm::vm
