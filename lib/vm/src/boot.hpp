// Booting x86-64 guests: the guest physical memory layout, kernel image parsing (vmlinux ELF
// with or without the PVH note, bzImage) and the tables a kernel expects to find: boot_params
// with its e820 map and command line (Linux 64-bit boot protocol), hvm_start_info (PVH), a GDT,
// identity-mapped page tables and an Intel MP table for SMP without ACPI.
// Everything here works on GuestMemory alone (no KVM), so it is unit-tested directly.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "guest_memory.hpp"

namespace img2vm::vm {

namespace layout {
inline constexpr uint64_t kGdt = 0x500;
inline constexpr uint64_t kIdt = 0x520;
inline constexpr uint64_t kPvhStartInfo = 0x6000;
inline constexpr uint64_t kPvhModList = 0x6040;
inline constexpr uint64_t kPvhMemMap = 0x6080;
inline constexpr uint64_t kZeroPage = 0x7000;  // boot_params
inline constexpr uint64_t kBootStack = 0x8ff0;
inline constexpr uint64_t kPml4 = 0x9000;
inline constexpr uint64_t kPdpt = 0xa000;
inline constexpr uint64_t kPd = 0xb000;  // 512 x 2 MiB = the first 1 GiB
inline constexpr uint64_t kCmdline = 0x20000;
inline constexpr uint64_t kCmdlineMax = 4096;      // bytes, including the terminating NUL
inline constexpr uint64_t kEbda = 0x9fc00;         // end of low RAM; the MP table lives here
inline constexpr uint64_t kBiosStart = 0xe0000;    // reserved [kEbda, 1 MiB)
inline constexpr uint64_t kHighMem = 0x100000;     // kernels load at or above 1 MiB
inline constexpr uint64_t kMmioBase = 0xd0000000;  // virtio-mmio devices, 4 KiB each
inline constexpr uint64_t kMmioStride = 0x1000;
inline constexpr unsigned kMmioFirstIrq = 5;        // device i gets IRQ 5 + i (IOAPIC pins)
inline constexpr uint64_t kMaxMemory = 0xc0000000;  // 3 GiB: guest RAM stays below the MMIO hole
inline constexpr uint64_t kMinMemory = 16u << 20;
inline constexpr uint64_t kIoApic = 0xfec00000;
inline constexpr uint64_t kLapic = 0xfee00000;
inline constexpr uint64_t kTssAddr = 0xfffbd000;
inline constexpr unsigned kMaxVcpus = 32;
}  // namespace layout

enum class KernelFormat { kElfPvh, kElf64, kBzImage };
const char* to_string(KernelFormat f) noexcept;

struct LoadedKernel {
  KernelFormat format = KernelFormat::kElf64;
  uint64_t entry = 0;                 // guest physical address of the first instruction
  uint64_t load_end = 0;              // first byte above everything loaded (initrd goes above)
  std::vector<uint8_t> setup_header;  // bzImage: header bytes from 0x1f1, copied to boot_params
  uint64_t initrd_addr_max = 0x7fffffff;
};

// Parses a kernel image and copies it into guest memory. Throws Error (kUnsupported or
// kInvalidArgument) naming what is wrong; never reads outside `image` or writes outside `mem`.
LoadedKernel load_kernel(std::span<const uint8_t> image, const GuestMemory& mem);

struct E820Entry {
  uint64_t addr;
  uint64_t size;
  uint32_t type;  // 1 RAM, 2 reserved
};
inline constexpr uint32_t kE820Ram = 1;
inline constexpr uint32_t kE820Reserved = 2;
std::vector<E820Entry> e820_map(uint64_t mem_size);

// Where an initrd of `size` bytes goes: page-aligned, as high as allowed, above the kernel.
// Throws Error(kLimit) when it does not fit.
uint64_t place_initrd(const GuestMemory& mem, const LoadedKernel& k, uint64_t size);

// The command line at layout::kCmdline. Throws Error(kLimit) if too long.
void write_cmdline(const GuestMemory& mem, const std::string& cmdline);
// boot_params at layout::kZeroPage (64-bit boot protocol, ELF or bzImage).
void write_boot_params(const GuestMemory& mem, const LoadedKernel& k, const std::string& cmdline,
                       uint64_t initrd_addr, uint64_t initrd_size);
// hvm_start_info (version 1) with a memory map at layout::kPvhStartInfo.
void write_pvh_start_info(const GuestMemory& mem, const std::string& cmdline, uint64_t initrd_addr,
                          uint64_t initrd_size);
// GDT at layout::kGdt: null, code (64-bit, or 32-bit for PVH), data, TSS; selectors 8/0x10/0x18.
void write_gdt(const GuestMemory& mem, bool long_mode);
uint64_t gdt_entry(unsigned index, bool long_mode) noexcept;
// PML4/PDPT/PD identity-mapping the first 1 GiB with 2 MiB pages.
void write_page_tables(const GuestMemory& mem);
// MP floating pointer + configuration table at layout::kEbda for `cpus` processors (APIC ids
// 0..cpus-1), one ISA bus, the IOAPIC (id = cpus) and ISA IRQs 0-23 routed to its pins.
void write_mp_table(const GuestMemory& mem, unsigned cpus);

}  // namespace img2vm::vm
