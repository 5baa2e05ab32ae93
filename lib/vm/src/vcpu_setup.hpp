// Per-vCPU initial state: CPUID, MSRs, FPU, local APIC LINT pins, and for the boot CPU the
// registers of the chosen entry (64-bit long mode or 32-bit PVH).
#pragma once

#include <linux/kvm.h>

#include <cstdint>
#include <vector>

namespace img2vm::vm {

// In C++ the uapi headers' __DECLARE_FLEX_ARRAY gives struct kvm_cpuid2 and struct kvm_msrs a
// wrong size (12/16 instead of 8) and moves their entries, so the ioctl numbers computed from
// them are wrong too (EINVAL). These are the C layouts: an 8-byte header, then the entries.
struct CpuidHeader {
  uint32_t nent;
  uint32_t padding;
};
struct MsrsHeader {
  uint32_t nmsrs;
  uint32_t pad;
};
static_assert(sizeof(CpuidHeader) == 8 && sizeof(MsrsHeader) == 8);
inline constexpr unsigned long kIoctlGetSupportedCpuid = _IOWR(KVMIO, 0x05, CpuidHeader);
inline constexpr unsigned long kIoctlSetCpuid2 = _IOW(KVMIO, 0x90, CpuidHeader);
inline constexpr unsigned long kIoctlSetMsrs = _IOW(KVMIO, 0x89, MsrsHeader);

struct CpuidTable {
  std::vector<uint8_t> buf;  // CpuidHeader + nent x kvm_cpuid_entry2
  CpuidHeader* header() { return reinterpret_cast<CpuidHeader*>(buf.data()); }
  kvm_cpuid_entry2* entries() {
    return reinterpret_cast<kvm_cpuid_entry2*>(buf.data() + sizeof(CpuidHeader));
  }
};

// KVM_GET_SUPPORTED_CPUID from the /dev/kvm fd. Throws Error.
CpuidTable supported_cpuid(int kvm_fd);
// Adapts the table for vCPU `id` (APIC id, hypervisor bit, TSC deadline), sets it and returns it.
CpuidTable setup_cpuid(int vcpu_fd, const CpuidTable& supported, unsigned id, unsigned vcpus,
                       bool tsc_deadline);
void setup_msrs(int vcpu_fd);
void setup_fpu(int vcpu_fd);
void setup_lapic(int vcpu_fd);
// Boot CPU registers: long mode with paging (`pvh` false: rsi = boot_params) or 32-bit
// protected mode without paging (`pvh` true: ebx = hvm_start_info).
void setup_boot_regs(int vcpu_fd, uint64_t entry, bool pvh);

}  // namespace img2vm::vm
