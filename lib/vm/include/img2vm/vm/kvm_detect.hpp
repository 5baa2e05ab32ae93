// What kind of KVM this host offers, so that `img2vm run` and the tests can say which case
// applies: hardware virtualization, a software nested hypervisor (PVM), or none at all.
#pragma once

#include <string>

namespace img2vm::vm {

// The kind of KVM this host offers.
enum class KvmKind {
  kUnavailable,  // no /dev/kvm, or it cannot be opened
  kHardware,     // kvm_intel / kvm_amd on VMX/SVM (possibly itself nested under a hypervisor)
  kPvm,          // kvm_pvm: a software nested hypervisor; boots tiny guests, Linux crawls
  kOther,        // /dev/kvm works but the backend module is not one we recognise
};

// What detect_kvm() found.
struct KvmInfo {
  KvmKind kind = KvmKind::kUnavailable;
  int api_version = -1;           // KVM_GET_API_VERSION, -1 when not opened
  bool under_hypervisor = false;  // the host itself runs in a VM (CPUID hypervisor bit)
  std::string module;             // "kvm_intel", "kvm_amd", "kvm_pvm" or empty
  std::string detail;             // one line for humans, e.g. why it is unavailable
};

// Probes /dev/kvm (override the path for tests) and /sys/module.
KvmInfo detect_kvm(const std::string& dev = "/dev/kvm",
                   const std::string& sys_module = "/sys/module");

// "unavailable", "hardware", "pvm" or "other".
const char* to_string(KvmKind k) noexcept;

}  // namespace img2vm::vm
