// A PreparedMachine started detached (vms.hpp): apart from detached.cpp, whose monitor
// (run_monitor) img2vm-vmm links, so that the VMM program takes in neither vm::NetnsTap nor the
// libnl it uses.
#include <nlohmann/json.hpp>

#include "img2vm/base/error.hpp"
#include "img2vm/runtime/machine.hpp"
#include "img2vm/runtime/vms.hpp"
#include "img2vm/vm/machine_json.hpp"
#include "img2vm/vm/net_netns.hpp"

namespace img2vm::runtime {

using nlohmann::json;

DetachedOptions detached_options(const PreparedMachine& p, DetachedOptions o) {
  if (!p.shares.empty())
    throw Error(ErrorKind::kUnsupported,
                "a detached VM's shared directories must be served by its monitor: build the "
                "machine with MachineOptions::defer_shares");
  // img2vm's own tap network is undone when the PreparedMachine goes, long before the VM ends.
  if (p.tap)
    throw Error(ErrorKind::kUnsupported, "a detached VM cannot use img2vm's tap network yet");
  // A tap whose host side outlives this process (a container engine's namespace, NetnsTap): the
  // monitor and the VMM keep its descriptor (the spec's net.tap.fd), and so the device; the
  // monitor restores the namespace once the VM has ended.
  if (p.config.net && p.config.net->tap && p.config.net->tap->fd >= 0)
    o.pass_fds.push_back(p.config.net->tap->fd);
  if (p.netns) o.netns_restore = p.netns->restore_state();
  for (int fd : {p.overrides_disk.get(), p.initramfs.get()})
    if (fd >= 0) o.pass_fds.push_back(fd);
  // The volumes stay locked (in use) as long as the monitor runs.
  for (const auto& v : p.volumes) o.pass_fds.push_back(v.lock.get());
  o.shares.insert(o.shares.end(), p.deferred_shares.begin(), p.deferred_shares.end());
  return o;
}

VmRecord start_detached(VmStore& store, const VmCreate& c, const PreparedMachine& p,
                        const DetachedOptions& o) {
  DetachedOptions full = detached_options(p, o);
  json spec = {{"machine", json::parse(vm::machine_config_to_json(p.config))}};
  return start_detached(store, c, spec.dump(), full);
}

}  // namespace img2vm::runtime
