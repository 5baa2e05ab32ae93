// The guest's network interface, set up by PID 1 from the run overrides (docs/guest-abi.md):
// MAC, address and netmask, MTU, link up, a default route, IPv6 addresses and other routes, with
// the classic ioctls so that the init needs neither netlink code nor an `ip` binary in the image.
#pragma once

#include <cstdint>
#include <string>

#include "img2vm/guestabi/config.hpp"

namespace img2vm::init {

// The netmask for a prefix length 0-32, in network byte order.
uint32_t prefix_netmask(unsigned prefix);

// Configures `cfg.interface`: address, netmask, MTU, link up and the default route; a gateway
// outside the subnet gets a host route on the link first. Then the IPv6 addresses (without
// duplicate address detection) and the other routes, those on the link before those through a
// gateway. Throws Error naming the step and the interface.
void configure_interface(const guestabi::NetConfig& cfg);

}  // namespace img2vm::init
