// Network namespaces for tests that must never touch the host's network: the test process
// moves into a mount and a network namespace of its own, with a private tmpfs on /run/netns,
// so the namespaces `ip netns add NAME` makes there (/run/netns/NAME) are the test's alone and
// vanish with its process, also when it crashes. Needs root.
#pragma once

#include <functional>
#include <string>
#include <vector>

namespace img2vm::testing {

// Moves this process (single-threaded: unshare(CLONE_NEWNS) refuses a process with threads)
// into namespaces of its own as above, loopback up. Returns why not ("" when done).
std::string enter_private_netns_dir();

// Runs `ip ARGS...`; throws img2vm::Error with ip's message when it fails.
void run_ip(const std::vector<std::string>& args);

// What podman or containerd would make for a container, with iproute2: namespace `vm` holding
// eth0, a veth (10.99.0.2/24, MAC 02:42:0a:63:00:02, MTU 1400, default route via 10.99.0.1 and a
// route to 192.168.77.0/24 via it), whose peer peer0 (10.99.0.1/24, 02:42:0a:63:00:01) is in
// namespace `peer`, the engine's side. Throws img2vm::Error when ip fails.
void make_engine_netns(const std::string& vm = "vm", const std::string& peer = "peer");

// Runs `f` on a thread of its own inside the network namespace at `path` (sockets it makes
// stay in that namespace); rethrows what it throws.
void in_netns(const std::string& path, const std::function<void()>& f);

}  // namespace img2vm::testing
