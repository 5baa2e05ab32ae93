// Boot layout: e820, boot_params, PVH start_info, page tables, GDT, MP table, and kernel image
// parsing (ELF with/without the PVH note, bzImage) against synthetic images.
#include "boot.hpp"

#include <gtest/gtest.h>

#include <cstdio>
#include <cstring>
#include <fstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "guest_memory.hpp"
#include "img2vm/base/error.hpp"

using namespace img2vm;
using namespace img2vm::vm;

namespace {

template <typename T>
T at(const GuestMemory& m, uint64_t gpa) {
  auto v = m.load<T>(gpa);
  EXPECT_TRUE(v.has_value()) << gpa;
  return v.value_or(T{});
}

template <typename T>
void put(std::vector<uint8_t>& b, size_t off, T v) {
  if (b.size() < off + sizeof v) throw std::out_of_range("put");
  std::memcpy(b.data() + off, &v, sizeof v);
}

// A minimal ELF64 x86-64 image with one PT_LOAD of `payload` at `paddr` and optionally a PT_NOTE
// holding XEN_ELFNOTE_PHYS32_ENTRY.
std::vector<uint8_t> make_elf(uint64_t paddr, const std::string& payload, uint64_t entry,
                              uint32_t pvh_entry = 0, uint64_t memsz = 0) {
  std::vector<uint8_t> b(0x200, 0);
  std::memcpy(b.data(),
              "\x7f"
              "ELF",
              4);
  b[4] = 2;
  b[5] = 1;
  b[6] = 1;
  put<uint16_t>(b, 16, 2);   // ET_EXEC
  put<uint16_t>(b, 18, 62);  // EM_X86_64
  put<uint32_t>(b, 20, 1);
  put<uint64_t>(b, 24, entry);
  put<uint64_t>(b, 32, 64);  // phoff
  put<uint16_t>(b, 52, 64);
  put<uint16_t>(b, 54, 56);
  put<uint16_t>(b, 56, pvh_entry ? 2 : 1);
  // PT_LOAD
  put<uint32_t>(b, 64, 1);
  put<uint64_t>(b, 64 + 8, 0x200);            // offset
  put<uint64_t>(b, 64 + 16, paddr);           // vaddr
  put<uint64_t>(b, 64 + 24, paddr);           // paddr
  put<uint64_t>(b, 64 + 32, payload.size());  // filesz
  put<uint64_t>(b, 64 + 40, memsz ? memsz : payload.size());
  if (pvh_entry) {
    put<uint32_t>(b, 120, 4);  // PT_NOTE
    put<uint64_t>(b, 120 + 8, 0x180);
    put<uint64_t>(b, 120 + 32, 20);
    put<uint32_t>(b, 0x180, 4);
    put<uint32_t>(b, 0x184, 4);
    put<uint32_t>(b, 0x188, 18);
    std::memcpy(b.data() + 0x18c, "Xen", 4);
    put<uint32_t>(b, 0x190, pvh_entry);
  }
  b.insert(b.end(), payload.begin(), payload.end());
  return b;
}

std::vector<uint8_t> make_bzimage(uint16_t xloadflags = 1) {
  std::vector<uint8_t> b(1024, 0);
  b[0x1f1] = 1;  // setup_sects: the kernel starts at (1+1)*512
  put<uint16_t>(b, 0x1fe, 0xaa55);
  b[0x201] = 0x66;  // jump offset: header ends at 0x268
  std::memcpy(b.data() + 0x202, "HdrS", 4);
  put<uint16_t>(b, 0x206, 0x020f);
  b[0x211] = 1;  // LOADED_HIGH
  put<uint32_t>(b, 0x22c, 0x7fffffff);
  put<uint32_t>(b, 0x230, 0x200000);  // kernel_alignment (copied to boot_params)
  put<uint16_t>(b, 0x236, xloadflags);
  put<uint32_t>(b, 0x260, 0x10000);  // init_size
  std::string body = "compressed kernel goes here";
  b.insert(b.end(), body.begin(), body.end());
  return b;
}

}  // namespace

TEST(Boot, E820MapLeavesTheBiosHoleReserved) {
  auto m = e820_map(256u << 20);
  ASSERT_EQ(m.size(), 3u);
  EXPECT_EQ(m[0].addr, 0u);
  EXPECT_EQ(m[0].size, 0x9fc00u);
  EXPECT_EQ(m[0].type, kE820Ram);
  EXPECT_EQ(m[1].addr, 0x9fc00u);
  EXPECT_EQ(m[1].addr + m[1].size, 0x100000u);
  EXPECT_EQ(m[1].type, kE820Reserved);
  EXPECT_EQ(m[2].addr, 0x100000u);
  EXPECT_EQ(m[2].addr + m[2].size, 256u << 20);
  EXPECT_EQ(m[2].type, kE820Ram);
}

TEST(Boot, BootParamsForVmlinux) {
  GuestMemory mem(64u << 20);
  LoadedKernel k;
  k.format = KernelFormat::kElf64;
  write_boot_params(mem, k, "console=ttyS0 panic=-1", 0x3000000, 0x12345);
  const uint64_t bp = layout::kZeroPage;
  EXPECT_EQ(at<uint16_t>(mem, bp + 0x1fe), 0xaa55);
  EXPECT_EQ(std::memcmp(mem.ptr(bp + 0x202, 4), "HdrS", 4), 0);
  EXPECT_EQ(at<uint8_t>(mem, bp + 0x210), 0xff);
  EXPECT_EQ(at<uint8_t>(mem, bp + 0x211) & 0x81, 0x81);
  EXPECT_EQ(at<uint32_t>(mem, bp + 0x228), layout::kCmdline);
  EXPECT_STREQ(reinterpret_cast<const char*>(mem.ptr(layout::kCmdline, 1)),
               "console=ttyS0 panic=-1");
  EXPECT_EQ(at<uint32_t>(mem, bp + 0x218), 0x3000000u);
  EXPECT_EQ(at<uint32_t>(mem, bp + 0x21c), 0x12345u);
  ASSERT_EQ(at<uint8_t>(mem, bp + 0x1e8), 3);
  EXPECT_EQ(at<uint64_t>(mem, bp + 0x2d0 + 40), 0x100000u);                // entry 2 addr
  EXPECT_EQ(at<uint64_t>(mem, bp + 0x2d0 + 48), (64u << 20) - 0x100000u);  // entry 2 size
  EXPECT_EQ(at<uint32_t>(mem, bp + 0x2d0 + 56), kE820Ram);
}

TEST(Boot, CommandLineLimits) {
  GuestMemory mem(16u << 20);
  EXPECT_NO_THROW(write_cmdline(mem, std::string(layout::kCmdlineMax - 1, 'a')));
  try {
    write_cmdline(mem, std::string(layout::kCmdlineMax, 'a'));
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kLimit);
    EXPECT_NE(std::string(e.what()).find("command line"), std::string::npos);
  }
  EXPECT_THROW(write_cmdline(mem, std::string("a\0b", 3)), Error);
}

TEST(Boot, PvhStartInfo) {
  GuestMemory mem(32u << 20);
  write_pvh_start_info(mem, "root=/dev/vda", 0x1000000, 4096);
  const uint64_t si = layout::kPvhStartInfo;
  EXPECT_EQ(at<uint32_t>(mem, si), 0x336ec578u);
  EXPECT_EQ(at<uint32_t>(mem, si + 4), 1u);
  EXPECT_EQ(at<uint32_t>(mem, si + 12), 1u);
  EXPECT_EQ(at<uint64_t>(mem, si + 16), layout::kPvhModList);
  EXPECT_EQ(at<uint64_t>(mem, layout::kPvhModList), 0x1000000u);
  EXPECT_EQ(at<uint64_t>(mem, layout::kPvhModList + 8), 4096u);
  EXPECT_EQ(at<uint64_t>(mem, si + 24), layout::kCmdline);
  EXPECT_EQ(at<uint64_t>(mem, si + 40), layout::kPvhMemMap);
  ASSERT_EQ(at<uint32_t>(mem, si + 48), 3u);
  EXPECT_EQ(at<uint64_t>(mem, layout::kPvhMemMap + 48), 0x100000u);
  EXPECT_EQ(at<uint32_t>(mem, layout::kPvhMemMap + 48 + 16), kE820Ram);
}

TEST(Boot, PageTablesIdentityMapFirstGigabyteWith2MiBPages) {
  GuestMemory mem(16u << 20);
  write_page_tables(mem);
  EXPECT_EQ(at<uint64_t>(mem, layout::kPml4), layout::kPdpt | 3);
  EXPECT_EQ(at<uint64_t>(mem, layout::kPdpt), layout::kPd | 3);
  EXPECT_EQ(at<uint64_t>(mem, layout::kPdpt + 8), 0u);
  for (uint64_t i : {0ull, 1ull, 300ull, 511ull})
    EXPECT_EQ(at<uint64_t>(mem, layout::kPd + 8 * i), (i << 21) | 0x83);
}

TEST(Boot, GdtEntries) {
  GuestMemory mem(16u << 20);
  write_gdt(mem, true);
  EXPECT_EQ(at<uint64_t>(mem, layout::kGdt), 0u);
  EXPECT_EQ(at<uint64_t>(mem, layout::kGdt + 8), 0x00af9b000000ffffull);  // 64-bit code (L=1)
  write_gdt(mem, false);
  EXPECT_EQ(at<uint64_t>(mem, layout::kGdt + 8), 0x00cf9b000000ffffull);  // 32-bit code (D=1)
  EXPECT_EQ(at<uint64_t>(mem, layout::kGdt + 16), 0x00cf93000000ffffull);
}

TEST(Boot, MpTableIsWellFormed) {
  GuestMemory mem(16u << 20);
  const unsigned cpus = 4;
  write_mp_table(mem, cpus);
  const uint8_t* fp = mem.ptr(layout::kEbda, 16);
  ASSERT_EQ(std::memcmp(fp, "_MP_", 4), 0);
  uint8_t sum = 0;
  for (int i = 0; i < 16; ++i) sum = uint8_t(sum + fp[i]);
  EXPECT_EQ(sum, 0) << "floating pointer checksum";
  EXPECT_EQ(fp[8], 1);
  EXPECT_EQ(fp[9], 4);
  uint32_t cfg = at<uint32_t>(mem, layout::kEbda + 4);
  ASSERT_EQ(std::memcmp(mem.ptr(cfg, 4), "PCMP", 4), 0);
  uint16_t len = at<uint16_t>(mem, cfg + 4);
  const uint8_t* t = mem.ptr(cfg, len);
  ASSERT_NE(t, nullptr);
  sum = 0;
  for (unsigned i = 0; i < len; ++i) sum = uint8_t(sum + t[i]);
  EXPECT_EQ(sum, 0) << "configuration table checksum";
  EXPECT_EQ(at<uint32_t>(mem, cfg + 36), 0xfee00000u);
  uint16_t count = at<uint16_t>(mem, cfg + 34);
  EXPECT_EQ(count, cpus + 1 + 1 + 24 + 2);
  // Walk the entries: processors first with APIC ids 0..3, only the first is the BSP.
  unsigned off = 44, procs = 0, ioapics = 0, irqs = 0;
  for (unsigned i = 0; i < count; ++i) {
    ASSERT_LT(off, len);
    uint8_t type = t[off];
    if (type == 0) {
      EXPECT_EQ(t[off + 1], procs);
      EXPECT_EQ(t[off + 3] & 2, procs == 0 ? 2 : 0);
      EXPECT_EQ(t[off + 3] & 1, 1);
      ++procs;
      off += 20;
    } else {
      if (type == 2) {
        ++ioapics;
        EXPECT_EQ(t[off + 1], cpus);  // IOAPIC id after the CPUs
      }
      if (type == 3) {
        EXPECT_EQ(t[off + 5], t[off + 7]);  // ISA IRQ n -> pin n
        ++irqs;
      }
      off += 8;
    }
  }
  EXPECT_EQ(off, len);
  EXPECT_EQ(procs, cpus);
  EXPECT_EQ(ioapics, 1u);
  EXPECT_EQ(irqs, 24u);
  EXPECT_LE(layout::kEbda + 16 + len, layout::kBiosStart);
  EXPECT_THROW(write_mp_table(mem, 0), Error);
  EXPECT_THROW(write_mp_table(mem, layout::kMaxVcpus + 1), Error);
}

TEST(Boot, ElfWithPvhNoteUsesThePvhEntry) {
  GuestMemory mem(32u << 20);
  auto img = make_elf(0x1000000, "KERNELCODE", 0x1000000, 0x1000004, 0x2000);
  auto k = load_kernel(img, mem);
  EXPECT_EQ(k.format, KernelFormat::kElfPvh);
  EXPECT_EQ(k.entry, 0x1000004u);
  EXPECT_EQ(k.load_end, 0x1002000u);
  EXPECT_EQ(std::memcmp(mem.ptr(0x1000000, 10), "KERNELCODE", 10), 0);
  EXPECT_EQ(at<uint8_t>(mem, 0x1001fff), 0);  // bss zeroed
}

TEST(Boot, ElfWithoutNoteUses64BitEntry) {
  GuestMemory mem(32u << 20);
  auto k = load_kernel(make_elf(0x200000, "X", 0x200000), mem);
  EXPECT_EQ(k.format, KernelFormat::kElf64);
  EXPECT_EQ(k.entry, 0x200000u);
}

TEST(Boot, MalformedElfIsRejected) {
  GuestMemory mem(32u << 20);
  auto expect_bad = [&](std::vector<uint8_t> img, const std::string& what) {
    try {
      load_kernel(img, mem);
      ADD_FAILURE() << "accepted: " << what;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(what), std::string::npos) << e.what();
    }
  };
  auto img = make_elf(0x200000, "X", 0x200000);
  auto wrong_machine = img;
  wrong_machine[18] = 3;
  expect_bad(wrong_machine, "not an x86-64 ELF");
  auto phoff = img;
  put<uint64_t>(phoff, 32, 1u << 30);
  expect_bad(phoff, "program headers outside the file");
  auto filesz = img;
  put<uint64_t>(filesz, 64 + 32, 1u << 30);
  expect_bad(filesz, "filesz > memsz");
  auto offset = img;
  put<uint64_t>(offset, 64 + 8, ~0ull - 4);
  expect_bad(offset, "outside the file");
  expect_bad(make_elf(0x1000, "X", 0x1000), "below 1 MiB");
  expect_bad(make_elf(0x200000, "X", 0x900000), "entry point");
  expect_bad(make_elf(0x1f00000, "X", 0x1f00000, 0, 1u << 22), "does not fit in guest memory");
  expect_bad(make_elf(~0ull - 0x10, "X", 0x200000, 0, 0x100), "does not fit in guest memory");
  expect_bad(std::vector<uint8_t>(100, 0), "neither an ELF vmlinux nor a bzImage");
  expect_bad(std::vector<uint8_t>(img.begin(), img.begin() + 40), "truncated");
}

TEST(Boot, BzImageLoadsAtOneMiBWithItsSetupHeader) {
  GuestMemory mem(32u << 20);
  auto img = make_bzimage();
  auto k = load_kernel(img, mem);
  EXPECT_EQ(k.format, KernelFormat::kBzImage);
  EXPECT_EQ(k.entry, 0x100200u);
  EXPECT_EQ(std::memcmp(mem.ptr(0x100000, 10), "compressed", 10), 0);
  EXPECT_EQ(k.load_end, 0x100000u + 0x10000u);  // init_size reserved
  ASSERT_EQ(k.setup_header.size(), 0x268u - 0x1f1u);
  write_boot_params(mem, k, "quiet", 0, 0);
  EXPECT_EQ(at<uint32_t>(mem, layout::kZeroPage + 0x230), 0x200000u);  // copied from the image
  EXPECT_EQ(at<uint16_t>(mem, layout::kZeroPage + 0x206), 0x020fu);
  EXPECT_EQ(at<uint8_t>(mem, layout::kZeroPage + 0x210), 0xff);
}

TEST(Boot, BzImageWithout64BitEntryIsRejected) {
  GuestMemory mem(32u << 20);
  try {
    load_kernel(make_bzimage(0), mem);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("XLF_KERNEL_64"), std::string::npos) << e.what();
  }
  auto old = make_bzimage();
  put<uint16_t>(old, 0x206, 0x0204);
  EXPECT_THROW(load_kernel(old, mem), Error);
}

TEST(Boot, InitrdGoesHighAndMustFit) {
  GuestMemory mem(64u << 20);
  LoadedKernel k;
  k.load_end = 0x2000000;
  uint64_t a = place_initrd(mem, k, 5000);
  EXPECT_EQ(a % 4096, 0u);
  EXPECT_GE(a, k.load_end);
  EXPECT_LE(a + 5000, mem.size());
  EXPECT_GT(a, mem.size() - 3 * 4096);
  try {
    place_initrd(mem, k, 40u << 20);
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kLimit);
  }
  EXPECT_THROW(place_initrd(mem, k, ~0ull), Error);
}

TEST(GuestMemory, BoundsChecksAreOverflowSafe) {
  GuestMemory mem(1u << 20);
  EXPECT_TRUE(mem.contains(0, 1u << 20));
  EXPECT_TRUE(mem.contains(1u << 20, 0));
  EXPECT_FALSE(mem.contains(1, 1u << 20));
  EXPECT_FALSE(mem.contains(~0ull, 2));
  EXPECT_FALSE(mem.contains(2, ~0ull));
  EXPECT_EQ(mem.ptr(~0ull - 1, 4), nullptr);
  EXPECT_FALSE(mem.load<uint32_t>((1u << 20) - 2).has_value());
  EXPECT_THROW(GuestMemory(0), Error);
}

// The pages right before and after guest RAM are mapped but inaccessible, so that a device
// access just outside guest memory faults instead of reaching other memory of the process.
TEST(GuestMemory, GuardPagesSurroundGuestRam) {
  GuestMemory mem(1u << 20);
  const auto base = reinterpret_cast<uintptr_t>(mem.host_base()), end = base + mem.size();
  // The permissions of the mapping that holds `addr` ("" when none does).
  auto perms_at = [](uintptr_t addr) {
    std::ifstream maps("/proc/self/maps");
    for (std::string line; std::getline(maps, line);) {
      unsigned long lo = 0, hi = 0;
      char perms[5] = {};
      if (std::sscanf(line.c_str(), "%lx-%lx %4s", &lo, &hi, perms) == 3 && addr >= lo && addr < hi)
        return std::string(perms);
    }
    return std::string();
  };
  EXPECT_EQ(perms_at(base), "rw-p");
  EXPECT_EQ(perms_at(end - 1), "rw-p");
  EXPECT_EQ(perms_at(base - 1), "---p") << "no guard page before guest RAM";
  EXPECT_EQ(perms_at(base - 4096), "---p");
  EXPECT_EQ(perms_at(end), "---p") << "no guard page after guest RAM";
  EXPECT_EQ(perms_at(end + 4095), "---p");
}

// Huge pages come from the host's hugetlb pool: with enough free pages the mapping works and
// is rounded to 2 MiB; without, the error says what to raise.
TEST(GuestMemory, HugePagesWorkOrSayWhatIsMissing) {
  uint64_t free_pages = 0, page_kib = 0;
  std::ifstream mi("/proc/meminfo");
  for (std::string line; std::getline(mi, line);) {
    if (line.rfind("HugePages_Free:", 0) == 0) free_pages = std::stoull(line.substr(15));
    if (line.rfind("Hugepagesize:", 0) == 0) page_kib = std::stoull(line.substr(13));
  }
  if (page_kib == 2048 && free_pages >= 2) {
    GuestMemory m(3u << 20, GuestMemory::Pages::kHuge2M);
    EXPECT_EQ(m.size(), 4u << 20);
    ASSERT_TRUE(m.write(m.size() - 8, "hugepage", 8));
    EXPECT_EQ(m.host_base()[0], 0);
  } else {
    try {
      GuestMemory m(64u << 20, GuestMemory::Pages::kHuge2M);
      ADD_FAILURE() << "mapped huge pages although /proc/meminfo shows " << free_pages << " free";
    } catch (const img2vm::Error& e) {
      EXPECT_NE(std::string(e.what()).find("nr_hugepages"), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("32 free"), std::string::npos) << e.what();
    }
  }
  GuestMemory normal(3u << 20);
  EXPECT_EQ(normal.size(), 3u << 20);
}
