#include "img2vm/vm/kvm_detect.hpp"

#include <cpuid.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

#include "img2vm/base/fd.hpp"

namespace img2vm::vm {

namespace {
bool cpu_has_hypervisor_bit() {
  unsigned a, b, c, d;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return false;
  return (c >> 31) & 1;
}
}  // namespace

const char* to_string(KvmKind k) noexcept {
  switch (k) {
    case KvmKind::kUnavailable:
      return "unavailable";
    case KvmKind::kHardware:
      return "hardware";
    case KvmKind::kPvm:
      return "pvm";
    case KvmKind::kOther:
      return "other";
  }
  return "?";
}

KvmInfo detect_kvm(const std::string& dev, const std::string& sys_module) {
  namespace fs = std::filesystem;
  KvmInfo info;
  info.under_hypervisor = cpu_has_hypervisor_bit();
  std::error_code ec;
  for (const char* m : {"kvm_pvm", "kvm_intel", "kvm_amd"}) {
    if (fs::exists(fs::path(sys_module) / m, ec)) {
      info.module = m;
      break;
    }
  }
  int fd = ::open(dev.c_str(), O_RDWR | O_CLOEXEC);
  if (fd < 0) {
    int err = errno;
    info.detail = dev + ": " + std::strerror(err);
    if (err == EACCES) info.detail += " (add yourself to the 'kvm' group)";
    if (err == ENOENT && info.module == "kvm_pvm")
      info.detail += " (the kvm_pvm module is loaded but exposes no device here)";
    return info;
  }
  UniqueFd kvm(fd);
  info.api_version = ::ioctl(kvm.get(), KVM_GET_API_VERSION, 0);
  if (info.api_version != KVM_API_VERSION) {
    info.detail = dev + ": unexpected KVM API version " + std::to_string(info.api_version);
    return info;
  }
  if (info.module == "kvm_pvm") {
    info.kind = KvmKind::kPvm;
    info.detail =
        "KVM backed by PVM (software nested virtualization): tiny guests run, Linux guests are "
        "very slow";
  } else if (info.module == "kvm_intel" || info.module == "kvm_amd") {
    info.kind = KvmKind::kHardware;
    info.detail = "hardware KVM (" + info.module + ")" +
                  (info.under_hypervisor ? ", nested under a hypervisor" : "");
  } else {
    info.kind = KvmKind::kOther;
    info.detail = "KVM available through an unrecognised module";
  }
  return info;
}

}  // namespace img2vm::vm
