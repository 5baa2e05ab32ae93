// Per-vCPU initial state: CPUID, MSRs, FPU, local APIC LINT pins, and for the boot CPU the
// registers of the chosen entry (64-bit long mode or 32-bit PVH).
#pragma once

#include <linux/kvm.h>

#include <cstdint>
#include <memory>

namespace img2vm::vm {

struct CpuidTable {
  std::unique_ptr<uint8_t[]> buf;
  kvm_cpuid2* get() { return reinterpret_cast<kvm_cpuid2*>(buf.get()); }
};

// KVM_GET_SUPPORTED_CPUID from the /dev/kvm fd. Throws Error.
CpuidTable supported_cpuid(int kvm_fd);
// Adapts the table for vCPU `id` (APIC id, hypervisor bit, TSC deadline) and sets it.
void setup_cpuid(int vcpu_fd, const CpuidTable& supported, unsigned id, unsigned vcpus, bool tsc_deadline);
void setup_msrs(int vcpu_fd);
void setup_fpu(int vcpu_fd);
void setup_lapic(int vcpu_fd);
// Boot CPU registers: long mode with paging (`pvh` false: rsi = boot_params) or 32-bit
// protected mode without paging (`pvh` true: ebx = hvm_start_info).
void setup_boot_regs(int vcpu_fd, uint64_t entry, bool pvh);

}  // namespace img2vm::vm
