#include "snapshot_file.hpp"

#include "img2vm/base/error.hpp"

namespace img2vm::vm {

namespace {

constexpr size_t kHeader = sizeof kSnapshotMagic + 8;  // magic, version, section count
constexpr size_t kSectionHeader = 12;                  // kind, instance, length

bool known(uint32_t kind) {
  switch (static_cast<Section>(kind)) {
    case Section::kMachine:
    case Section::kCpuid:
    case Section::kMpState:
    case Section::kRegs:
    case Section::kSregs:
    case Section::kXsave:
    case Section::kXcrs:
    case Section::kDebugRegs:
    case Section::kLapic:
    case Section::kMsrs:
    case Section::kVcpuEvents:
    case Section::kTscKhz:
    case Section::kPicMaster:
    case Section::kPicSlave:
    case Section::kIoapic:
    case Section::kPit:
    case Section::kClock:
    case Section::kUart:
    case Section::kI8042:
    case Section::kVirtioMmio:
    case Section::kVirtioDevice:
    case Section::kDisk:
      return true;
  }
  return false;
}

const char* name(Section s) {
  switch (s) {
    case Section::kMachine:
      return "machine";
    case Section::kCpuid:
      return "CPUID";
    case Section::kMpState:
      return "MP state";
    case Section::kRegs:
      return "registers";
    case Section::kSregs:
      return "special registers";
    case Section::kXsave:
      return "XSAVE area";
    case Section::kXcrs:
      return "XCRs";
    case Section::kDebugRegs:
      return "debug registers";
    case Section::kLapic:
      return "local APIC";
    case Section::kMsrs:
      return "MSRs";
    case Section::kVcpuEvents:
      return "pending events";
    case Section::kTscKhz:
      return "TSC frequency";
    case Section::kPicMaster:
      return "master PIC";
    case Section::kPicSlave:
      return "slave PIC";
    case Section::kIoapic:
      return "IOAPIC";
    case Section::kPit:
      return "PIT";
    case Section::kClock:
      return "clock";
    case Section::kUart:
      return "UART";
    case Section::kI8042:
      return "i8042";
    case Section::kVirtioMmio:
      return "transport";
    case Section::kVirtioDevice:
      return "state";
    case Section::kDisk:
      return "disk";
  }
  return "unknown";
}

bool per_vcpu(Section s) {
  auto v = static_cast<uint32_t>(s);
  return v >= 10 && v < 30;
}

uint32_t load_u32(const char* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

void put_u32(std::string& out, uint32_t v) { out.append(reinterpret_cast<const char*>(&v), 4); }

Error damaged(const std::string& why) {
  return Error(ErrorKind::kIntegrity, "snapshot state file: " + why);
}

}  // namespace

std::string describe(Section s, uint32_t instance) {
  std::string n = name(s);
  if (per_vcpu(s)) return "vCPU " + std::to_string(instance) + " " + n;
  if (s == Section::kVirtioMmio || s == Section::kVirtioDevice)
    return "virtio-mmio device " + std::to_string(instance) + "'s " + n;
  if (s == Section::kDisk) return "disk " + std::to_string(instance) + "'s section";
  return "the " + n + " section";
}

void SnapshotWriter::add(Section s, uint32_t instance, std::span<const uint8_t> payload) {
  sections_.push_back({{static_cast<uint32_t>(s), instance}, {payload.begin(), payload.end()}});
}

std::string SnapshotWriter::serialize() const {
  std::string out(kSnapshotMagic, sizeof kSnapshotMagic);
  put_u32(out, kSnapshotVersion);
  put_u32(out, static_cast<uint32_t>(sections_.size()));
  for (const auto& [key, payload] : sections_) {
    put_u32(out, key.first);
    put_u32(out, key.second);
    put_u32(out, static_cast<uint32_t>(payload.size()));
    out.append(reinterpret_cast<const char*>(payload.data()), payload.size());
  }
  return out;
}

SnapshotState SnapshotState::parse(std::string_view bytes) {
  if (bytes.size() > kMaxSnapshotState)
    throw damaged("larger than " + std::to_string(kMaxSnapshotState) + " bytes");
  if (bytes.size() < kHeader || std::memcmp(bytes.data(), kSnapshotMagic, sizeof kSnapshotMagic))
    throw damaged("not an img2vm snapshot (no IMG2VMSN header)");
  uint32_t version = load_u32(bytes.data() + 8);
  if (version != kSnapshotVersion)
    throw Error(ErrorKind::kUnsupported, "snapshot state file: format version " +
                                             std::to_string(version) + ", this img2vm reads " +
                                             std::to_string(kSnapshotVersion));
  uint32_t count = load_u32(bytes.data() + 12);
  if (count > kMaxSnapshotSections)
    throw damaged(std::to_string(count) + " sections (at most " +
                  std::to_string(kMaxSnapshotSections) + ")");
  SnapshotState st;
  st.data_.assign(bytes);
  size_t pos = kHeader;
  for (uint32_t i = 0; i < count; ++i) {
    if (bytes.size() - pos < kSectionHeader)
      throw damaged("truncated in section " + std::to_string(i + 1) + " of " +
                    std::to_string(count));
    uint32_t kind = load_u32(bytes.data() + pos), instance = load_u32(bytes.data() + pos + 4),
             len = load_u32(bytes.data() + pos + 8);
    pos += kSectionHeader;
    if (!known(kind)) throw damaged("unknown section kind " + std::to_string(kind));
    if (instance >= kMaxSnapshotInstance)
      throw damaged(describe(Section(kind), instance) + ": instance out of range");
    if (len > kMaxSnapshotSection)
      throw damaged(describe(Section(kind), instance) + " is " + std::to_string(len) +
                    " bytes (at most " + std::to_string(kMaxSnapshotSection) + ")");
    if (bytes.size() - pos < len)
      throw damaged("truncated in " + describe(Section(kind), instance));
    if (!st.sections_.emplace(std::pair{kind, instance}, std::pair{pos, size_t(len)}).second)
      throw damaged(describe(Section(kind), instance) + " appears twice");
    pos += len;
  }
  if (pos != bytes.size())
    throw damaged(std::to_string(bytes.size() - pos) + " bytes after the last section");
  return st;
}

bool SnapshotState::has(Section s, uint32_t instance) const {
  return sections_.count({static_cast<uint32_t>(s), instance}) != 0;
}

std::span<const uint8_t> SnapshotState::get(Section s, uint32_t instance) const {
  auto it = sections_.find({static_cast<uint32_t>(s), instance});
  if (it == sections_.end()) throw damaged(describe(s, instance) + " is missing");
  return {reinterpret_cast<const uint8_t*>(data_.data()) + it->second.first, it->second.second};
}

std::vector<SnapshotState::Entry> SnapshotState::entries() const {
  std::vector<Entry> out;
  for (const auto& [key, where] : sections_)
    out.push_back({static_cast<Section>(key.first),
                   key.second,
                   {reinterpret_cast<const uint8_t*>(data_.data()) + where.first, where.second}});
  return out;
}

void SnapshotState::check_size(Section s, uint32_t instance, size_t got, size_t want) {
  if (got != want)
    throw damaged(describe(s, instance) + " is " + std::to_string(got) + " bytes, not " +
                  std::to_string(want));
}

void SnapshotState::check_array(Section s, uint32_t instance, size_t got, size_t elem, size_t max) {
  if (got % elem != 0)
    throw damaged(describe(s, instance) + " is " + std::to_string(got) +
                  " bytes, not a multiple of " + std::to_string(elem));
  if (got / elem > max)
    throw damaged(describe(s, instance) + " has " + std::to_string(got / elem) +
                  " entries (at most " + std::to_string(max) + ")");
}

}  // namespace img2vm::vm
