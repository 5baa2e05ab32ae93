// The KVM side of a snapshot: a vCPU's architectural state and the VM's in-kernel devices
// (PICs, IOAPIC, PIT, kvmclock) into snapshot sections, and back. Saving needs the vCPUs out of
// KVM_RUN with their last exit completed (Machine pauses them); restoring happens on freshly
// created vCPUs of a VM whose irqchip and PIT exist, before they first run.
#pragma once

#include "snapshot_file.hpp"
#include "vcpu_setup.hpp"

namespace img2vm::vm {

// At most this many MSRs per vCPU in a snapshot.
inline constexpr size_t kMaxSnapshotMsrs = 1024;

// The MSRs KVM can save and restore (KVM_GET_MSR_INDEX_LIST), the TSC first and the TSC
// deadline last (it is relative to the TSC). Throws Error.
std::vector<uint32_t> saveable_msrs(int kvm_fd);

// vCPU `id`'s state, with the CPUID table it was given (`cpuid`).
void save_vcpu(int vcpu_fd, unsigned id, const std::vector<uint32_t>& msrs, const CpuidTable& cpuid,
               SnapshotWriter& w);
// Checks that `cpuid` (what this host gives vCPU `id` now) is what the snapshot's vCPU had,
// then sets every register, the local APIC, the MSRs and pending events. Throws Error
// (kUnsupported for another CPU, kIntegrity for a section KVM refuses).
void restore_vcpu(int vcpu_fd, unsigned id, CpuidTable cpuid, const SnapshotState& st);

void save_vm(int vm_fd, SnapshotWriter& w);
void restore_vm(int vm_fd, const SnapshotState& st);

}  // namespace img2vm::vm
