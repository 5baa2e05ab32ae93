// A MachineConfig as JSON: the file `img2vm-vmm --config FILE` boots (docs/vm.md, "The VMM
// process"), and how `img2vm run` hands a prepared VM to that lean process.
//
//   {"memory_mib": 256, "vcpus": 1, "kernel": "/path/vmlinux", "cmdline": "console=ttyS0 ...",
//    "disks": [{"path": "root.ext4", "mode": "copy-on-write", "id": "img2vm-root"}],
//    "net": {"mtu": 1500, "user": {"outbound": true, "forwards": [{"host_port": 8080, "guest_port":
//    80}]}}}
//
// Every member is optional except "kernel"; absent ones keep MachineConfig's defaults. Unknown
// members are refused (a misspelt key must not be silently ignored). A NicConfig with its own
// `backend` (a TapBackend) has no JSON form.
#pragma once

#include <string>
#include <string_view>

#include "img2vm/vm/machine.hpp"

namespace img2vm::vm {

// Throws Error(kInvalidArgument) when the config holds a caller-made network backend.
std::string machine_config_to_json(const MachineConfig& config);
// Throws Error(kInvalidArgument) naming the member that is malformed, unknown or out of range.
MachineConfig machine_config_from_json(std::string_view json);

}  // namespace img2vm::vm
