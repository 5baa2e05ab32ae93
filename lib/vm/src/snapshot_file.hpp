// The state file of a VM snapshot (docs/snapshots.md): a versioned list of sections, each the
// saved state of one part of the machine (a vCPU's registers, the interrupt controllers, a
// device). The file is untrusted when read back: SnapshotState::parse bounds every size and
// count, refuses unknown or repeated sections, and hands out sections only at the exact size
// the caller expects. Guest memory is a separate file (the guest's RAM as is).
#pragma once

#include <cstdint>
#include <cstring>
#include <map>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

namespace img2vm::vm {

inline constexpr char kSnapshotMagic[8] = {'I', 'M', 'G', '2', 'V', 'M', 'S', 'N'};
inline constexpr uint32_t kSnapshotVersion = 1;
inline constexpr size_t kMaxSnapshotState = 16u << 20;   // the whole state file
inline constexpr size_t kMaxSnapshotSection = 1u << 20;  // one section's payload
inline constexpr uint32_t kMaxSnapshotSections = 4096;   // sections in one file
inline constexpr uint32_t kMaxSnapshotInstance = 1024;   // vCPU ids and device indices

// What a section holds. A value not listed here is refused (a newer format).
enum class Section : uint32_t {
  kMachine = 1,  // SnapshotMachine
  // Per vCPU (instance = vCPU id): the KVM structures, byte for byte.
  kCpuid = 10,  // the CPUID table the vCPU was given (CpuidHeader + entries)
  kMpState = 11,
  kRegs = 12,
  kSregs = 13,
  kXsave = 14,  // 4096 bytes (KVM_GET_XSAVE)
  kXcrs = 15,
  kDebugRegs = 16,
  kLapic = 17,
  kMsrs = 18,  // SnapshotMsr entries
  kVcpuEvents = 19,
  kTscKhz = 20,  // uint32_t
  // The VM's in-kernel devices (instance 0).
  kPicMaster = 30,  // kvm_irqchip
  kPicSlave = 31,
  kIoapic = 32,
  kPit = 33,    // kvm_pit_state2
  kClock = 34,  // kvm_clock_data
  // The VMM's own devices (instance 0).
  kUart = 40,
  kI8042 = 41,
  // Virtio devices (instance = the device's virtio-mmio slot: disks first, as at boot).
  kVirtioMmio = 50,    // VirtioMmioState and the queues (virtio_mmio.hpp)
  kVirtioDevice = 51,  // the device's own state (VirtioDevice::save_state)
  // Disks (instance = the disk's index in MachineConfig::disks).
  kDisk = 52,  // SnapshotDisk
};
// "vCPU 0 registers", "the UART", ... for messages.
std::string describe(Section s, uint32_t instance);

// The shape of the machine the snapshot was taken of; a restore must configure the same.
struct SnapshotMachine {
  uint64_t memory_bytes = 0;
  uint32_t vcpus = 0;
  uint32_t kernel_format = 0;  // KernelFormat, for the record
  uint32_t disks = 0, nics = 0, shared_dirs = 0, vsock = 0;
  uint32_t reserved[8] = {};
};
static_assert(sizeof(SnapshotMachine) == 64);

// A disk as the snapshot's machine had it; a restore must configure it alike.
struct SnapshotDisk {
  uint64_t size = 0;          // bytes
  uint32_t mode = 0;          // DiskMode
  uint32_t saved_writes = 0;  // 1: the guest's writes so far are in the snapshot's disk-N
  uint32_t reserved[4] = {};
};
static_assert(sizeof(SnapshotDisk) == 32);

struct SnapshotMsr {
  uint32_t index = 0;
  uint32_t reserved = 0;
  uint64_t data = 0;
};
static_assert(sizeof(SnapshotMsr) == 16);

// Sections to be written, then serialised in one piece.
class SnapshotWriter {
 public:
  void add(Section s, uint32_t instance, std::span<const uint8_t> payload);
  template <typename T>
  void add_struct(Section s, uint32_t instance, const T& v) {
    static_assert(std::is_trivially_copyable_v<T>);
    add(s, instance, {reinterpret_cast<const uint8_t*>(&v), sizeof v});
  }
  // The file's bytes: magic, version, section count, then each section as
  // u32 kind | u32 instance | u32 length | payload (little-endian, as the host is).
  std::string serialize() const;

 private:
  std::vector<std::pair<std::pair<uint32_t, uint32_t>, std::vector<uint8_t>>> sections_;
};

// A parsed state file. Throws img2vm::Error (kIntegrity for a damaged or foreign file,
// kUnsupported for another version) naming what is wrong.
class SnapshotState {
 public:
  static SnapshotState parse(std::string_view bytes);

  bool has(Section s, uint32_t instance) const;
  // The section's payload; throws when it is missing.
  std::span<const uint8_t> get(Section s, uint32_t instance) const;
  // A section holding exactly one T; throws when it is missing or of another size.
  template <typename T>
  T get_struct(Section s, uint32_t instance) const {
    static_assert(std::is_trivially_copyable_v<T>);
    auto p = get(s, instance);
    check_size(s, instance, p.size(), sizeof(T));
    T v;
    std::memcpy(&v, p.data(), sizeof v);
    return v;
  }
  // A section holding n >= 0 Ts, at most `max`.
  template <typename T>
  std::vector<T> get_array(Section s, uint32_t instance, size_t max) const {
    static_assert(std::is_trivially_copyable_v<T>);
    auto p = get(s, instance);
    check_array(s, instance, p.size(), sizeof(T), max);
    std::vector<T> v(p.size() / sizeof(T));
    if (!v.empty()) std::memcpy(v.data(), p.data(), p.size());
    return v;
  }
  size_t size() const { return sections_.size(); }
  struct Entry {
    Section section;
    uint32_t instance;
    std::span<const uint8_t> payload;
  };
  // Every section, ordered by kind and instance.
  std::vector<Entry> entries() const;

 private:
  static void check_size(Section s, uint32_t instance, size_t got, size_t want);
  static void check_array(Section s, uint32_t instance, size_t got, size_t elem, size_t max);
  std::string data_;
  std::map<std::pair<uint32_t, uint32_t>, std::pair<size_t, size_t>> sections_;  // offset, len
};

}  // namespace img2vm::vm
