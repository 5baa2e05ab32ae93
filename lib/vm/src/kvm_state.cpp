#include "kvm_state.hpp"

#include <cpuid.h>
#include <linux/kvm.h>
#include <sys/ioctl.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>

#include "img2vm/base/error.hpp"

namespace img2vm::vm {

namespace {

// The uapi's struct kvm_xsave and struct kvm_msr_list end in flexible arrays whose C++ size is
// not their C size (vcpu_setup.hpp), so their ioctl numbers are computed from these.
struct Xsave4096 {
  uint32_t region[1024];
};
struct MsrListHeader {
  uint32_t nmsrs;
};
constexpr unsigned long kIoctlGetXsave = _IOR(KVMIO, 0xa4, Xsave4096);
constexpr unsigned long kIoctlSetXsave = _IOW(KVMIO, 0xa5, Xsave4096);
constexpr unsigned long kIoctlGetMsrIndexList = _IOWR(KVMIO, 0x02, MsrListHeader);
constexpr unsigned long kIoctlGetMsrs = _IOWR(KVMIO, 0x88, MsrsHeader);

constexpr uint32_t kMsrTsc = 0x10, kMsrTscDeadline = 0x6e0;

int kvm_call(int fd, unsigned long req, void* arg, const std::string& what) {
  int r;
  do r = ::ioctl(fd, req, arg);
  while (r < 0 && errno == EINTR);
  if (r < 0) throw_errno("KVM: " + what);
  return r;
}

// A KVM structure saved and restored as is, with the calls that get and set it.
struct Plain {
  Section section;
  unsigned long get, set;
  const char* get_name;
  const char* set_name;
  size_t size;
};
// Per vCPU, in the order they are read and written back: the MP state first (reading it makes
// KVM take in pending APIC events), the special registers before the local APIC (its base is
// one of them).
const Plain kVcpuPlain[] = {
    {Section::kMpState, KVM_GET_MP_STATE, KVM_SET_MP_STATE, "KVM_GET_MP_STATE", "KVM_SET_MP_STATE",
     sizeof(kvm_mp_state)},
    {Section::kRegs, KVM_GET_REGS, KVM_SET_REGS, "KVM_GET_REGS", "KVM_SET_REGS", sizeof(kvm_regs)},
    {Section::kSregs, KVM_GET_SREGS, KVM_SET_SREGS, "KVM_GET_SREGS", "KVM_SET_SREGS",
     sizeof(kvm_sregs)},
    {Section::kXsave, kIoctlGetXsave, kIoctlSetXsave, "KVM_GET_XSAVE", "KVM_SET_XSAVE",
     sizeof(Xsave4096)},
    {Section::kXcrs, KVM_GET_XCRS, KVM_SET_XCRS, "KVM_GET_XCRS", "KVM_SET_XCRS", sizeof(kvm_xcrs)},
    {Section::kDebugRegs, KVM_GET_DEBUGREGS, KVM_SET_DEBUGREGS, "KVM_GET_DEBUGREGS",
     "KVM_SET_DEBUGREGS", sizeof(kvm_debugregs)},
    {Section::kLapic, KVM_GET_LAPIC, KVM_SET_LAPIC, "KVM_GET_LAPIC", "KVM_SET_LAPIC",
     sizeof(kvm_lapic_state)},
};
const Plain kPit = {Section::kPit,  KVM_GET_PIT2,   KVM_SET_PIT2,
                    "KVM_GET_PIT2", "KVM_SET_PIT2", sizeof(kvm_pit_state2)};

void save_plain(int fd, const Plain& p, uint32_t id, SnapshotWriter& w) {
  std::vector<uint64_t> buf((p.size + 7) / 8);  // 8-byte aligned for KVM's structures
  kvm_call(fd, p.get, buf.data(), p.get_name);
  w.add(p.section, id, {reinterpret_cast<const uint8_t*>(buf.data()), p.size});
}

// Whether this host's CPU is AMD's (or Hygon's): KVM runs guests with SVM.
bool host_is_amd() {
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (!__get_cpuid(0, &a, &b, &c, &d)) return false;
  char v[13] = {};
  std::memcpy(v, &b, 4);
  std::memcpy(v + 4, &d, 4);
  std::memcpy(v + 8, &c, 4);
  return std::strcmp(v, "AuthenticAMD") == 0 || std::strcmp(v, "HygonGenuine") == 0;
}

// The task register as the CPU held it. KVM on AMD reports it with the busy bit set whatever
// the guest's VMCB holds (svm_get_segment: the bit "isn't exposed"), while the CPU keeps what
// LTR loaded: an available TSS (type 9). Given back as busy (11), an emulated AMD CPU (qemu's
// TCG: the nested rig's L1) refuses every port access from user mode (#GP on the TSS's I/O
// bitmap), so the guest init could not report anything after a restore. Intel's VMX requires
// the busy type: only on AMD.
void unbusy_task_register(kvm_sregs& s) {
  if (s.tr.type == 11 && host_is_amd()) s.tr.type = 9;
}

void restore_plain(int fd, const Plain& p, uint32_t id, const SnapshotState& st) {
  auto bytes = st.get_array<uint8_t>(p.section, id, p.size);
  if (bytes.size() != p.size)
    throw Error(ErrorKind::kIntegrity, "snapshot state file: " + describe(p.section, id) + " is " +
                                           std::to_string(bytes.size()) + " bytes, not " +
                                           std::to_string(p.size));
  std::vector<uint64_t> buf((p.size + 7) / 8);
  std::memcpy(buf.data(), bytes.data(), p.size);
  if (p.section == Section::kSregs) unbusy_task_register(*reinterpret_cast<kvm_sregs*>(buf.data()));
  if (::ioctl(fd, p.set, buf.data()) < 0)
    throw Error(ErrorKind::kIntegrity, "snapshot: KVM refused " + describe(p.section, id) + " (" +
                                           p.set_name + ": " + std::strerror(errno) + ")");
}

std::vector<uint8_t> msrs_buffer(size_t n) {
  std::vector<uint8_t> buf(sizeof(MsrsHeader) + n * sizeof(kvm_msr_entry), 0);
  reinterpret_cast<MsrsHeader*>(buf.data())->nmsrs = uint32_t(n);
  return buf;
}
kvm_msr_entry* msr_entries(std::vector<uint8_t>& buf) {
  return reinterpret_cast<kvm_msr_entry*>(buf.data() + sizeof(MsrsHeader));
}

// What KVM gives, reading each MSR of `want`; an MSR KVM lists but cannot read now (KVM_GET_MSRS
// stops at the first it fails) is left out.
std::vector<SnapshotMsr> read_msrs(int vcpu_fd, const std::vector<uint32_t>& want) {
  std::vector<SnapshotMsr> out;
  size_t from = 0;
  while (from < want.size()) {
    size_t n = want.size() - from;
    auto buf = msrs_buffer(n);
    for (size_t i = 0; i < n; ++i) msr_entries(buf)[i].index = want[from + i];
    int r = kvm_call(vcpu_fd, kIoctlGetMsrs, buf.data(), "KVM_GET_MSRS");
    for (int i = 0; i < r; ++i)
      out.push_back({msr_entries(buf)[i].index, 0, msr_entries(buf)[i].data});
    from += size_t(r) + 1;  // skip the one that failed
  }
  return out;
}

std::string hex(uint32_t v) {
  char b[16];
  std::snprintf(b, sizeof b, "0x%x", v);
  return b;
}

}  // namespace

std::vector<uint32_t> saveable_msrs(int kvm_fd) {
  MsrListHeader probe{0};
  if (::ioctl(kvm_fd, kIoctlGetMsrIndexList, &probe) < 0 && errno != E2BIG)
    throw_errno("KVM: KVM_GET_MSR_INDEX_LIST");
  if (probe.nmsrs > kMaxSnapshotMsrs)
    throw Error(ErrorKind::kUnsupported, "KVM lists " + std::to_string(probe.nmsrs) +
                                             " MSRs (at most " + std::to_string(kMaxSnapshotMsrs) +
                                             " are saved)");
  std::vector<uint32_t> buf(1 + probe.nmsrs);
  buf[0] = probe.nmsrs;
  kvm_call(kvm_fd, kIoctlGetMsrIndexList, buf.data(), "KVM_GET_MSR_INDEX_LIST");
  std::vector<uint32_t> list(buf.begin() + 1, buf.begin() + 1 + std::min(buf[0], probe.nmsrs));
  // The TSC first and the deadline last: KVM takes a deadline relative to the TSC's value.
  std::stable_partition(list.begin(), list.end(), [](uint32_t m) { return m == kMsrTsc; });
  std::stable_partition(list.begin(), list.end(), [](uint32_t m) { return m != kMsrTscDeadline; });
  return list;
}

void save_vcpu(int fd, unsigned id, const std::vector<uint32_t>& msrs, const CpuidTable& cpuid,
               SnapshotWriter& w) {
  w.add(Section::kCpuid, id, cpuid.buf);
  for (const Plain& p : kVcpuPlain) save_plain(fd, p, id, w);
  auto values = read_msrs(fd, msrs);
  w.add(Section::kMsrs, id,
        {reinterpret_cast<const uint8_t*>(values.data()), values.size() * sizeof(SnapshotMsr)});
  kvm_vcpu_events events{};
  kvm_call(fd, KVM_GET_VCPU_EVENTS, &events, "KVM_GET_VCPU_EVENTS");
  w.add_struct(Section::kVcpuEvents, id, events);
  uint32_t khz = uint32_t(::ioctl(fd, KVM_GET_TSC_KHZ, 0));
  w.add_struct(Section::kTscKhz, id, khz);
}

void restore_vcpu(int fd, unsigned id, CpuidTable cpuid, const SnapshotState& st) {
  auto saved = st.get(Section::kCpuid, id);
  if (saved.size() != cpuid.buf.size() ||
      !std::equal(saved.begin(), saved.end(), cpuid.buf.begin()))
    throw Error(ErrorKind::kUnsupported, "snapshot: taken on a CPU with other features (vCPU " +
                                             std::to_string(id) +
                                             "'s CPUID differs from what this host's KVM offers)");
  uint32_t khz = st.get_struct<uint32_t>(Section::kTscKhz, id);
  int here = ::ioctl(fd, KVM_GET_TSC_KHZ, 0);
  if (khz != 0 && here > 0 && uint32_t(here) != khz &&
      ::ioctl(fd, KVM_SET_TSC_KHZ, static_cast<unsigned long>(khz)) < 0)
    throw Error(ErrorKind::kUnsupported, "snapshot: taken with a TSC of " + std::to_string(khz) +
                                             " kHz, this host's is " + std::to_string(here) +
                                             " kHz and KVM cannot scale it");
  for (const Plain& p : kVcpuPlain) restore_plain(fd, p, id, st);
  auto msrs = st.get_array<SnapshotMsr>(Section::kMsrs, id, kMaxSnapshotMsrs);
  auto buf = msrs_buffer(msrs.size());
  for (size_t i = 0; i < msrs.size(); ++i) {
    msr_entries(buf)[i].index = msrs[i].index;
    msr_entries(buf)[i].data = msrs[i].data;
  }
  int r = ::ioctl(fd, kIoctlSetMsrs, buf.data());
  if (r < 0 || size_t(r) != msrs.size())
    throw Error(ErrorKind::kIntegrity,
                "snapshot: KVM refused vCPU " + std::to_string(id) + "'s MSR " +
                    (r < 0 ? std::string(std::strerror(errno)) : hex(msrs[size_t(r)].index)));
  auto events = st.get_struct<kvm_vcpu_events>(Section::kVcpuEvents, id);
  // What GET leaves out of its flags but SET must be told to take.
  events.flags |= KVM_VCPUEVENT_VALID_NMI_PENDING | KVM_VCPUEVENT_VALID_SIPI_VECTOR;
  if (::ioctl(fd, KVM_SET_VCPU_EVENTS, &events) < 0)
    throw Error(ErrorKind::kIntegrity, "snapshot: KVM refused " +
                                           describe(Section::kVcpuEvents, id) + ": " +
                                           std::strerror(errno));
}

void save_vm(int vm_fd, SnapshotWriter& w) {
  for (auto [chip, section] : {std::pair{KVM_IRQCHIP_PIC_MASTER, Section::kPicMaster},
                               {KVM_IRQCHIP_PIC_SLAVE, Section::kPicSlave},
                               {KVM_IRQCHIP_IOAPIC, Section::kIoapic}}) {
    kvm_irqchip c{};
    c.chip_id = uint32_t(chip);
    kvm_call(vm_fd, KVM_GET_IRQCHIP, &c, "KVM_GET_IRQCHIP");
    w.add_struct(section, 0, c);
  }
  save_plain(vm_fd, kPit, 0, w);
  kvm_clock_data clock{};
  kvm_call(vm_fd, KVM_GET_CLOCK, &clock, "KVM_GET_CLOCK");
  w.add_struct(Section::kClock, 0, clock);
}

void restore_vm(int vm_fd, const SnapshotState& st) {
  restore_plain(vm_fd, kPit, 0, st);
  auto clock = st.get_struct<kvm_clock_data>(Section::kClock, 0);
  kvm_clock_data set{};
  set.clock = clock.clock;  // the guest's clock goes on from where it was (no realtime)
  if (::ioctl(vm_fd, KVM_SET_CLOCK, &set) < 0)
    throw Error(ErrorKind::kIntegrity,
                std::string("snapshot: KVM refused the clock: ") + std::strerror(errno));
  for (auto [chip, section] : {std::pair{KVM_IRQCHIP_PIC_MASTER, Section::kPicMaster},
                               {KVM_IRQCHIP_PIC_SLAVE, Section::kPicSlave},
                               {KVM_IRQCHIP_IOAPIC, Section::kIoapic}}) {
    auto c = st.get_struct<kvm_irqchip>(section, 0);
    if (c.chip_id != uint32_t(chip))
      throw Error(ErrorKind::kIntegrity, "snapshot state file: " + describe(section, 0) +
                                             " names chip " + std::to_string(c.chip_id));
    if (::ioctl(vm_fd, KVM_SET_IRQCHIP, &c) < 0)
      throw Error(ErrorKind::kIntegrity,
                  "snapshot: KVM refused " + describe(section, 0) + ": " + std::strerror(errno));
  }
}

}  // namespace img2vm::vm
