// VmStore::default_dir() alone: the monitor in img2vm-vmm links vms.cpp without the registry.
#include "img2vm/registry/store.hpp"
#include "img2vm/runtime/vms.hpp"

namespace img2vm::runtime {

std::filesystem::path VmStore::default_dir() { return registry::Store::default_home() / "vms"; }

}  // namespace img2vm::runtime
