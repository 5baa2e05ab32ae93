#include "vcpu_setup.hpp"

#include <sys/ioctl.h>

#include <cerrno>
#include <cstring>
#include <string>
#include <vector>

#include "boot.hpp"
#include "img2vm/base/error.hpp"

namespace img2vm::vm {

namespace {
void kvm_ioctl(int fd, unsigned long req, void* arg, const char* what) {
  if (::ioctl(fd, req, arg) < 0) throw_errno(std::string("KVM: ") + what);
}

kvm_segment segment(uint64_t desc, uint16_t selector) {
  kvm_segment s{};
  s.base = uint32_t(((desc >> 16) & 0xffffff) | (((desc >> 56) & 0xff) << 24));
  uint32_t limit = uint32_t((desc & 0xffff) | (((desc >> 48) & 0xf) << 16));
  s.g = (desc >> 55) & 1;
  s.limit = s.g ? (limit << 12) | 0xfff : limit;
  s.selector = selector;
  s.type = (desc >> 40) & 0xf;
  s.s = (desc >> 44) & 1;
  s.dpl = (desc >> 45) & 3;
  s.present = (desc >> 47) & 1;
  s.avl = (desc >> 52) & 1;
  s.l = (desc >> 53) & 1;
  s.db = (desc >> 54) & 1;
  return s;
}
}  // namespace

CpuidTable supported_cpuid(int kvm_fd) {
  for (unsigned n = 128; n <= 4096; n *= 2) {
    CpuidTable t;
    t.buf.assign(sizeof(CpuidHeader) + n * sizeof(kvm_cpuid_entry2), 0);
    t.header()->nent = n;
    if (::ioctl(kvm_fd, kIoctlGetSupportedCpuid, t.buf.data()) == 0) {
      t.buf.resize(sizeof(CpuidHeader) + t.header()->nent * sizeof(kvm_cpuid_entry2));
      return t;
    }
    if (errno != E2BIG) throw_errno("KVM: KVM_GET_SUPPORTED_CPUID");
  }
  throw Error(ErrorKind::kInternal, "KVM: KVM_GET_SUPPORTED_CPUID needs too many entries");
}

CpuidTable setup_cpuid(int vcpu_fd, const CpuidTable& supported, unsigned id, unsigned vcpus,
                       bool tsc_deadline) {
  CpuidTable c = supported;
  kvm_cpuid_entry2* entries = c.entries();
  for (unsigned i = 0; i < c.header()->nent; ++i) {
    kvm_cpuid_entry2& e = entries[i];
    switch (e.function) {
      case 1:
        e.ebx = (e.ebx & 0x0000ffff) | (uint32_t(vcpus) << 16) |
                (uint32_t(id) << 24);         // count, APIC id
        e.ecx |= 1u << 31;                    // hypervisor present
        if (tsc_deadline) e.ecx |= 1u << 24;  // TSC deadline timer
        if (vcpus > 1) e.edx |= 1u << 28;     // HTT: the logical count above is valid
        break;
      case 0xb:
      case 0x1f:
        e.edx = id;  // x2APIC id
        break;
      case 6:
        e.ecx &= ~1u;  // no APERF/MPERF
        break;
      default:
        break;
    }
  }
  kvm_ioctl(vcpu_fd, kIoctlSetCpuid2, c.buf.data(), "KVM_SET_CPUID2");
  return c;
}

void setup_msrs(int vcpu_fd) {
  const std::pair<uint32_t, uint64_t> msrs[] = {
      {0x174, 0},      {0x175, 0},      {0x176, 0},  // SYSENTER_CS/ESP/EIP
      {0xc0000081, 0}, {0xc0000082, 0},              // STAR, LSTAR
      {0xc0000083, 0}, {0xc0000084, 0},              // CSTAR, SYSCALL_MASK
      {0xc0000102, 0},                               // KERNEL_GS_BASE
      {0x10, 0},                                     // TSC
      {0x1a0, 1},                                    // MISC_ENABLE: fast string operations
  };
  constexpr unsigned n = sizeof msrs / sizeof msrs[0];
  std::vector<uint8_t> buf(sizeof(MsrsHeader) + n * sizeof(kvm_msr_entry), 0);
  reinterpret_cast<MsrsHeader*>(buf.data())->nmsrs = n;
  auto* e = reinterpret_cast<kvm_msr_entry*>(buf.data() + sizeof(MsrsHeader));
  for (unsigned i = 0; i < n; ++i) {
    e[i].index = msrs[i].first;
    e[i].data = msrs[i].second;
  }
  int r = ::ioctl(vcpu_fd, kIoctlSetMsrs, buf.data());
  if (r < 0) throw_errno("KVM: KVM_SET_MSRS");
  if (unsigned(r) != n)
    throw Error(ErrorKind::kInternal,
                "KVM: KVM_SET_MSRS refused MSR " + std::to_string(msrs[r].first));
}

void setup_fpu(int vcpu_fd) {
  kvm_fpu fpu{};
  fpu.fcw = 0x37f;
  fpu.mxcsr = 0x1f80;
  kvm_ioctl(vcpu_fd, KVM_SET_FPU, &fpu, "KVM_SET_FPU");
}

void setup_lapic(int vcpu_fd) {
  kvm_lapic_state la{};
  kvm_ioctl(vcpu_fd, KVM_GET_LAPIC, &la, "KVM_GET_LAPIC");
  auto set_mode = [&](unsigned off, uint32_t mode) {
    uint32_t v;
    std::memcpy(&v, la.regs + off, 4);
    v = (v & ~0x700u) | (mode << 8);
    std::memcpy(la.regs + off, &v, 4);
  };
  set_mode(0x350, 7);  // LVT LINT0: ExtINT (the PIC)
  set_mode(0x360, 4);  // LVT LINT1: NMI
  kvm_ioctl(vcpu_fd, KVM_SET_LAPIC, &la, "KVM_SET_LAPIC");
}

void setup_boot_regs(int vcpu_fd, uint64_t entry, bool pvh) {
  kvm_sregs sregs{};
  kvm_ioctl(vcpu_fd, KVM_GET_SREGS, &sregs, "KVM_GET_SREGS");
  const bool long_mode = !pvh;
  sregs.gdt.base = layout::kGdt;
  sregs.gdt.limit = 4 * 8 - 1;
  sregs.idt.base = layout::kIdt;
  sregs.idt.limit = 7;
  sregs.cs = segment(gdt_entry(1, long_mode), 0x08);
  kvm_segment data = segment(gdt_entry(2, long_mode), 0x10);
  sregs.ds = sregs.es = sregs.fs = sregs.gs = sregs.ss = data;
  sregs.tr = segment(gdt_entry(3, long_mode), 0x18);
  if (long_mode) {
    sregs.cr3 = layout::kPml4;
    sregs.cr4 |= 0x20;                 // PAE
    sregs.cr0 |= 0x80000001u | 0x10u;  // PG | PE | ET
    sregs.efer |= 0x500;               // LME | LMA
  } else {
    sregs.cr0 = (sregs.cr0 | 0x11u) & ~0x80000000u;  // PE | ET, no paging
    sregs.cr4 = 0;
    sregs.efer = 0;
  }
  kvm_ioctl(vcpu_fd, KVM_SET_SREGS, &sregs, "KVM_SET_SREGS");

  kvm_regs regs{};
  regs.rflags = 2;
  regs.rip = entry;
  if (pvh) {
    regs.rbx = layout::kPvhStartInfo;
  } else {
    regs.rsp = regs.rbp = layout::kBootStack;
    regs.rsi = layout::kZeroPage;
  }
  kvm_ioctl(vcpu_fd, KVM_SET_REGS, &regs, "KVM_SET_REGS");
}

}  // namespace img2vm::vm
