// img2vm::runtime: the facade an orchestrator embeds (docs/library.md). Pull, convert, build
// the machine, run it:
//
//   using namespace img2vm;
//   registry::Store store(home);
//   runtime::ImageOptions io;
//   io.hooks.cancel = &stop_flag;
//   auto src = runtime::resolve_image(store, "registry.local:5000/app:1", io);
//   runtime::RootfsOptions ro;
//   ro.hooks = io.hooks;
//   runtime::RootfsResult root = runtime::convert_to_cache(store, *src, ro);
//   runtime::MachineOptions mo;
//   mo.kernel = runtime::find_guest_kernel()->path;
//   mo.rootfs = root.path;
//   mo.overrides.env = {"MODE=batch"};
//   mo.memory_mib = 512;
//   runtime::PreparedMachine pm = runtime::build_machine(std::move(mo));
//   auto vmm = runtime::VmmProcess::start(runtime::vmm_spec(pm.config));
//   int status = vmm.wait().host_exit_code();
#pragma once

#include "img2vm/runtime/agent_client.hpp"
#include "img2vm/runtime/hooks.hpp"
#include "img2vm/runtime/image.hpp"
#include "img2vm/runtime/kernel.hpp"
#include "img2vm/runtime/machine.hpp"
#include "img2vm/runtime/mounts.hpp"
#include "img2vm/runtime/rootfs.hpp"
#include "img2vm/runtime/virtiofsd.hpp"
#include "img2vm/runtime/vmm.hpp"
