#include "boot.hpp"

#include <algorithm>
#include <cstring>
#include <string>

#include "img2vm/base/error.hpp"

namespace img2vm::vm {

namespace {

template <typename T>
T get(std::span<const uint8_t> b, uint64_t off) {
  T v{};
  if (off > b.size() || sizeof(T) > b.size() - off)
    throw Error(ErrorKind::kUnsupported, "kernel image truncated at offset " + std::to_string(off));
  std::memcpy(&v, b.data() + off, sizeof v);
  return v;
}

[[noreturn]] void bad(const std::string& what) {
  throw Error(ErrorKind::kUnsupported, "kernel image: " + what);
}

void put(const GuestMemory& mem, uint64_t gpa, const void* src, uint64_t len) {
  if (!mem.write(gpa, src, len))
    throw Error(ErrorKind::kLimit,
                "guest memory too small for boot data at " + std::to_string(gpa));
}
template <typename T>
void put(const GuestMemory& mem, uint64_t gpa, T v) {
  put(mem, gpa, &v, sizeof v);
}

// ELF64 structures (little-endian x86-64 only).
struct Elf64Ehdr {
  uint8_t ident[16];
  uint16_t type, machine;
  uint32_t version;
  uint64_t entry, phoff, shoff;
  uint32_t flags;
  uint16_t ehsize, phentsize, phnum, shentsize, shnum, shstrndx;
};
struct Elf64Phdr {
  uint32_t type, flags;
  uint64_t offset, vaddr, paddr, filesz, memsz, align;
};
static_assert(sizeof(Elf64Ehdr) == 64 && sizeof(Elf64Phdr) == 56);
constexpr uint32_t kPtLoad = 1, kPtNote = 4;
constexpr uint32_t kXenElfNotePhys32Entry = 18;

LoadedKernel load_elf(std::span<const uint8_t> img, const GuestMemory& mem) {
  auto eh = get<Elf64Ehdr>(img, 0);
  if (eh.ident[4] != 2) bad("not a 64-bit ELF");
  if (eh.ident[5] != 1) bad("not a little-endian ELF");
  if (eh.machine != 62) bad("not an x86-64 ELF (e_machine " + std::to_string(eh.machine) + ")");
  if (eh.phentsize != sizeof(Elf64Phdr)) bad("unexpected program header size");
  if (eh.phnum == 0 || eh.phnum > 128) bad("bad program header count");
  if (eh.phoff > img.size() || uint64_t{eh.phnum} * sizeof(Elf64Phdr) > img.size() - eh.phoff)
    bad("program headers outside the file");
  LoadedKernel k;
  k.format = KernelFormat::kElf64;
  k.entry = eh.entry;
  bool loaded = false;
  uint64_t pvh_entry = 0;
  for (unsigned i = 0; i < eh.phnum; ++i) {
    auto ph = get<Elf64Phdr>(img, eh.phoff + uint64_t{i} * sizeof(Elf64Phdr));
    if (ph.type == kPtLoad) {
      if (ph.filesz > ph.memsz) bad("segment " + std::to_string(i) + " has filesz > memsz");
      if (ph.offset > img.size() || ph.filesz > img.size() - ph.offset)
        bad("segment " + std::to_string(i) + " lies outside the file");
      if (ph.paddr < layout::kHighMem) bad("segment " + std::to_string(i) + " loads below 1 MiB");
      uint8_t* dst = mem.ptr(ph.paddr, ph.memsz);
      if (!dst)
        throw Error(ErrorKind::kLimit,
                    "kernel image: segment " + std::to_string(i) +
                        " does not fit in guest memory (give the VM more memory)");
      std::memcpy(dst, img.data() + ph.offset, ph.filesz);
      std::memset(dst + ph.filesz, 0, ph.memsz - ph.filesz);
      k.load_end = std::max(k.load_end, ph.paddr + ph.memsz);
      loaded = true;
    } else if (ph.type == kPtNote) {
      if (ph.offset > img.size() || ph.filesz > img.size() - ph.offset)
        bad("note segment outside the file");
      uint64_t off = ph.offset, end = ph.offset + ph.filesz;
      while (end - off >= 12) {
        uint32_t namesz = get<uint32_t>(img, off), descsz = get<uint32_t>(img, off + 4),
                 type = get<uint32_t>(img, off + 8);
        uint64_t name_off = off + 12;
        uint64_t desc_off = name_off + ((uint64_t{namesz} + 3) & ~uint64_t{3});
        uint64_t next = desc_off + ((uint64_t{descsz} + 3) & ~uint64_t{3});
        if (next > end) break;  // malformed: ignore the rest of this segment
        if (type == kXenElfNotePhys32Entry && namesz == 4 &&
            std::memcmp(img.data() + name_off, "Xen", 4) == 0) {
          if (descsz == 4)
            pvh_entry = get<uint32_t>(img, desc_off);
          else if (descsz == 8)
            pvh_entry = get<uint64_t>(img, desc_off);
        }
        off = next;
      }
    }
  }
  if (!loaded) bad("no loadable segment");
  if (pvh_entry) {
    if (pvh_entry >= 0x100000000ull) bad("PVH entry point above 4 GiB");
    k.format = KernelFormat::kElfPvh;
    k.entry = pvh_entry;
  } else if (k.entry >= k.load_end || k.entry < layout::kHighMem) {
    // vmlinux's e_entry is a physical address inside what was loaded; reject anything else.
    bad("ELF entry point " + std::to_string(k.entry) + " is not inside a loaded segment");
  }
  return k;
}

LoadedKernel load_bzimage(std::span<const uint8_t> img, const GuestMemory& mem) {
  if (get<uint16_t>(img, 0x1fe) != 0xaa55) bad("bzImage without boot flag 0xaa55");
  uint16_t version = get<uint16_t>(img, 0x206);
  if (version < 0x20c)
    bad("boot protocol " + std::to_string(version >> 8) + "." + std::to_string(version & 0xff) +
        " is too old (need 2.12 for 64-bit entry)");
  uint8_t loadflags = get<uint8_t>(img, 0x211);
  if (!(loadflags & 1)) bad("not a bzImage (LOADED_HIGH unset)");
  uint16_t xloadflags = get<uint16_t>(img, 0x236);
  if (!(xloadflags & 1)) bad("bzImage has no 64-bit entry point (XLF_KERNEL_64)");
  unsigned setup_sects = get<uint8_t>(img, 0x1f1);
  if (setup_sects == 0) setup_sects = 4;
  uint64_t pm_off = (uint64_t{setup_sects} + 1) * 512;
  if (pm_off >= img.size()) bad("bzImage setup size beyond the file");
  uint64_t pm_size = img.size() - pm_off;
  uint32_t init_size = get<uint32_t>(img, 0x260);
  uint64_t need = std::max<uint64_t>(pm_size, init_size);
  uint8_t* dst = mem.ptr(layout::kHighMem, need);
  if (!dst) throw Error(ErrorKind::kLimit, "kernel image: bzImage needs more guest memory");
  std::memcpy(dst, img.data() + pm_off, pm_size);
  LoadedKernel k;
  k.format = KernelFormat::kBzImage;
  k.entry = layout::kHighMem + 0x200;  // startup_64
  k.load_end = layout::kHighMem + need;
  unsigned hdr_end = 0x202 + get<uint8_t>(img, 0x201);  // the jump's offset ends the header
  if (hdr_end <= 0x1f1 || hdr_end > img.size() || hdr_end > 0x290) bad("bzImage setup header size");
  k.setup_header.assign(img.begin() + 0x1f1, img.begin() + hdr_end);
  k.initrd_addr_max = get<uint32_t>(img, 0x22c);
  if (xloadflags & (1u << 1)) k.initrd_addr_max = layout::kMaxMemory;  // XLF_CAN_BE_LOADED_ABOVE_4G
  return k;
}

}  // namespace

const char* to_string(KernelFormat f) noexcept {
  switch (f) {
    case KernelFormat::kElfPvh:
      return "vmlinux (PVH entry)";
    case KernelFormat::kElf64:
      return "vmlinux (64-bit boot protocol)";
    case KernelFormat::kBzImage:
      return "bzImage (64-bit boot protocol)";
  }
  return "?";
}

LoadedKernel load_kernel(std::span<const uint8_t> image, const GuestMemory& mem) {
  if (image.size() >= 4 && std::memcmp(image.data(),
                                       "\x7f"
                                       "ELF",
                                       4) == 0)
    return load_elf(image, mem);
  if (image.size() >= 0x206 && std::memcmp(image.data() + 0x202, "HdrS", 4) == 0)
    return load_bzimage(image, mem);
  bad("neither an ELF vmlinux nor a bzImage");
}

std::vector<E820Entry> e820_map(uint64_t mem_size) {
  std::vector<E820Entry> m;
  m.push_back({0, layout::kEbda, kE820Ram});
  m.push_back({layout::kEbda, layout::kHighMem - layout::kEbda, kE820Reserved});
  if (mem_size > layout::kHighMem)
    m.push_back({layout::kHighMem, mem_size - layout::kHighMem, kE820Ram});
  return m;
}

uint64_t place_initrd(const GuestMemory& mem, const LoadedKernel& k, uint64_t size) {
  uint64_t top = std::min<uint64_t>(mem.size(), k.initrd_addr_max + uint64_t{1});
  uint64_t lowest = (k.load_end + 0xfff) & ~uint64_t{0xfff};
  if (size > top || top - size < lowest)
    throw Error(ErrorKind::kLimit, "the initrd (" + std::to_string(size) +
                                       " bytes) does not fit in guest memory above the kernel");
  return (top - size) & ~uint64_t{0xfff};
}

void write_cmdline(const GuestMemory& mem, const std::string& cmdline) {
  if (cmdline.size() + 1 > layout::kCmdlineMax)
    throw Error(ErrorKind::kLimit, "kernel command line is " + std::to_string(cmdline.size()) +
                                       " bytes; the limit is " +
                                       std::to_string(layout::kCmdlineMax - 1));
  if (cmdline.find('\0') != std::string::npos)
    throw Error(ErrorKind::kInvalidArgument, "kernel command line contains a NUL byte");
  put(mem, layout::kCmdline, cmdline.c_str(), cmdline.size() + 1);
}

void write_boot_params(const GuestMemory& mem, const LoadedKernel& k, const std::string& cmdline,
                       uint64_t initrd_addr, uint64_t initrd_size) {
  uint8_t bp[4096] = {};
  auto set = [&](unsigned off, auto v) { std::memcpy(bp + off, &v, sizeof v); };
  if (!k.setup_header.empty())
    std::memcpy(bp + 0x1f1, k.setup_header.data(), k.setup_header.size());
  set(0x1fe, uint16_t{0xaa55});                              // boot_flag
  std::memcpy(bp + 0x202, "HdrS", 4);                        // header
  if (k.setup_header.empty()) set(0x206, uint16_t{0x020f});  // version for a bare vmlinux
  set(0x210, uint8_t{0xff});                                 // type_of_loader: undefined
  set(0x211, uint8_t(bp[0x211] | 0x01 | 0x80));   // loadflags: LOADED_HIGH | CAN_USE_HEAP
  set(0x224, uint16_t{0xfe00});                   // heap_end_ptr
  set(0x228, uint32_t(layout::kCmdline));         // cmd_line_ptr
  set(0x238, uint32_t(layout::kCmdlineMax - 1));  // cmdline_size
  set(0x218, uint32_t(initrd_addr));              // ramdisk_image
  set(0x21c, uint32_t(initrd_size));              // ramdisk_size
  set(0x0c0, uint32_t(initrd_addr >> 32));        // ext_ramdisk_image
  set(0x0c4, uint32_t(initrd_size >> 32));        // ext_ramdisk_size
  auto map = e820_map(mem.size());
  set(0x1e8, uint8_t(map.size()));           // e820_entries
  for (size_t i = 0; i < map.size(); ++i) {  // e820_table at 0x2d0, 20 bytes each
    set(0x2d0 + 20 * i, map[i].addr);
    set(0x2d0 + 20 * i + 8, map[i].size);
    set(0x2d0 + 20 * i + 16, map[i].type);
  }
  write_cmdline(mem, cmdline);
  put(mem, layout::kZeroPage, bp, sizeof bp);
}

void write_pvh_start_info(const GuestMemory& mem, const std::string& cmdline, uint64_t initrd_addr,
                          uint64_t initrd_size) {
  write_cmdline(mem, cmdline);
  auto map = e820_map(mem.size());
  // struct hvm_start_info (xen/include/public/arch-x86/hvm/start_info.h), version 1.
  uint8_t si[56] = {};
  auto set = [&](unsigned off, auto v) { std::memcpy(si + off, &v, sizeof v); };
  set(0, uint32_t{0x336ec578});                              // magic
  set(4, uint32_t{1});                                       // version
  set(8, uint32_t{0});                                       // flags
  set(12, uint32_t(initrd_size ? 1 : 0));                    // nr_modules
  set(16, uint64_t(initrd_size ? layout::kPvhModList : 0));  // modlist_paddr
  set(24, uint64_t(layout::kCmdline));                       // cmdline_paddr
  set(32, uint64_t{0});                                      // rsdp_paddr: no ACPI
  set(40, uint64_t(layout::kPvhMemMap));                     // memmap_paddr
  set(48, uint32_t(map.size()));                             // memmap_entries
  put(mem, layout::kPvhStartInfo, si, sizeof si);
  if (initrd_size) {
    uint8_t mod[32] = {};  // hvm_modlist_entry: paddr, size, cmdline_paddr, reserved
    std::memcpy(mod, &initrd_addr, 8);
    std::memcpy(mod + 8, &initrd_size, 8);
    put(mem, layout::kPvhModList, mod, sizeof mod);
  }
  for (size_t i = 0; i < map.size(); ++i) {  // hvm_memmap_table_entry: addr, size, type, reserved
    uint8_t e[24] = {};
    std::memcpy(e, &map[i].addr, 8);
    std::memcpy(e + 8, &map[i].size, 8);
    std::memcpy(e + 16, &map[i].type, 4);
    put(mem, layout::kPvhMemMap + 24 * i, e, sizeof e);
  }
}

uint64_t gdt_entry(unsigned index, bool long_mode) noexcept {
  switch (index) {
    case 1:
      return long_mode ? 0x00af9b000000ffffull : 0x00cf9b000000ffffull;  // code, G, L or D/B
    case 2:
      return 0x00cf93000000ffffull;  // data, flat 4 GiB, writable
    case 3:
      return 0x008f8b000000ffffull;  // busy 32/64-bit TSS
    default:
      return 0;
  }
}

void write_gdt(const GuestMemory& mem, bool long_mode) {
  for (unsigned i = 0; i < 4; ++i) put(mem, layout::kGdt + 8 * i, gdt_entry(i, long_mode));
  put(mem, layout::kIdt, uint64_t{0});
}

void write_page_tables(const GuestMemory& mem) {
  constexpr uint64_t kPresentRw = 0x3, kHuge = 0x80;
  put(mem, layout::kPml4, layout::kPdpt | kPresentRw);
  put(mem, layout::kPdpt, layout::kPd | kPresentRw);
  for (uint64_t i = 0; i < 512; ++i) put(mem, layout::kPd + 8 * i, (i << 21) | kPresentRw | kHuge);
}

namespace {
uint8_t checksum(const uint8_t* p, size_t n) {
  uint8_t s = 0;
  for (size_t i = 0; i < n; ++i) s = uint8_t(s + p[i]);
  return uint8_t(-s);
}
}  // namespace

void write_mp_table(const GuestMemory& mem, unsigned cpus) {
  if (cpus == 0 || cpus > layout::kMaxVcpus)
    throw Error(ErrorKind::kInvalidArgument,
                "vCPU count must be 1.." + std::to_string(layout::kMaxVcpus));
  std::vector<uint8_t> t;
  auto add = [&](std::initializer_list<uint8_t> b) { t.insert(t.end(), b); };
  auto add32 = [&](uint32_t v) {
    for (int i = 0; i < 4; ++i) t.push_back(uint8_t(v >> (8 * i)));
  };
  // Floating pointer structure (16 bytes), then the configuration table right after it.
  const uint64_t fp = layout::kEbda, cfg = fp + 16;
  add({'_', 'M', 'P', '_'});
  add32(uint32_t(cfg));
  add({1, 4, 0, 0, 0, 0, 0, 0});  // length (16-byte units), spec rev 1.4, checksum, features
  t[10] = checksum(t.data(), 16);
  const size_t h = t.size();
  add({'P', 'C', 'M', 'P', 0, 0, 4, 0});  // signature, base length (later), rev, checksum
  for (char c : std::string("IMG2VM  ")) t.push_back(uint8_t(c));      // OEM id (8)
  for (char c : std::string("000000000000")) t.push_back(uint8_t(c));  // product id (12)
  add32(0);                                                            // OEM table pointer
  add({0, 0, 0, 0});  // OEM table size, entry count (later)
  add32(uint32_t(layout::kLapic));
  add({0, 0, 0, 0});  // extended length, checksum, reserved
  unsigned entries = 0;
  for (unsigned c = 0; c < cpus; ++c) {                   // processor entries
    add({0, uint8_t(c), 0x14, uint8_t(c == 0 ? 3 : 1)});  // type, APIC id, version, EN|BP
    add32(0x600);                                         // CPU signature (family 6)
    add32(0x201);                                         // features: FPU, APIC
    add32(0);
    add32(0);
    ++entries;
  }
  add({1, 0, 'I', 'S', 'A', ' ', ' ', ' '});  // bus 0: ISA
  ++entries;
  const uint8_t ioapic_id = uint8_t(cpus);
  add({2, ioapic_id, 0x11, 1});  // IOAPIC, version, enabled
  add32(uint32_t(layout::kIoApic));
  ++entries;
  for (uint8_t irq = 0; irq < 24; ++irq) {  // ISA IRQ n -> IOAPIC pin n (bus-default polarity)
    add({3, 0, 0, 0, 0, irq, ioapic_id, irq});
    ++entries;
  }
  add({4, 3, 0, 0, 0, 0, 0xff, 0});  // ExtINT -> LINT0 of all local APICs
  add({4, 1, 0, 0, 0, 0, 0xff, 1});  // NMI -> LINT1
  entries += 2;
  uint16_t len = uint16_t(t.size() - h);
  std::memcpy(&t[h + 4], &len, 2);
  uint16_t n = uint16_t(entries);
  std::memcpy(&t[h + 34], &n, 2);
  t[h + 7] = checksum(&t[h], len);
  if (fp + t.size() > layout::kBiosStart) throw Error(ErrorKind::kInternal, "MP table too large");
  put(mem, fp, t.data(), t.size());
}

}  // namespace img2vm::vm
