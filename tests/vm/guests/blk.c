/* A polling virtio-mmio block driver for the test guests (device 0 at 0xd0000000).
 *   mode=rw    read sector 0 and print it, write sector 1, flush, read it back, get the id,
 *              check that a request past the end fails; exit 0 when all went as expected
 *   mode=evil  submit malicious chains (a loop, an address outside RAM, a huge length, an
 *              out-of-range head index), check the device survives them, then reset it and
 *              read a sector again; exit 0 when the device behaved
 *   mode=snap  write sector 2 and read it back, write the snapshot point mark (BOOT_MARK 4),
 *              then print sector 3 and sector 2, write sector 3 and read it back; exit 0 */
#include "guest.h"

#define MMIO 0xd0000000ull
#define QN 8
static inline uint32_t r32(uint64_t off) { return *(volatile uint32_t*)(MMIO + off); }
static inline void w32(uint64_t off, uint32_t v) { *(volatile uint32_t*)(MMIO + off) = v; }

struct desc {
  uint64_t addr;
  uint32_t len;
  uint16_t flags, next;
};
static struct desc descs[QN] __attribute__((aligned(16)));
static struct { uint16_t flags, idx, ring[QN], used_event; } avail __attribute__((aligned(4)));
static struct {
  uint16_t flags, idx;
  struct {
    uint32_t id, len;
  } ring[QN];
  uint16_t avail_event;
} used __attribute__((aligned(8)));
static uint64_t pd[512] __attribute__((aligned(4096)));
static struct {
  uint32_t type, reserved;
  uint64_t sector;
} hdr;
static uint8_t buf[1024], status;
static uint16_t next_used;

static void map_mmio(void) { /* identity-map 3-4 GiB uncached through PDPT[3] */
  for (uint64_t i = 0; i < 512; ++i) pd[i] = (0xc0000000ull + (i << 21)) | 0x93;
  *(volatile uint64_t*)(0xa000 + 3 * 8) = (uint64_t)(uintptr_t)pd | 3;
  uint64_t cr3;
  __asm__ volatile("mov %%cr3, %0; mov %0, %%cr3" : "=r"(cr3)::"memory");
}

static int init_dev(void) {
  if (r32(0) != 0x74726976 || r32(4) != 2 || r32(8) != 2) return 10;
  w32(0x70, 0);
  w32(0x70, 1);
  w32(0x70, 3);
  w32(0x14, 1);
  if (!(r32(0x10) & 1)) return 11; /* VERSION_1 */
  w32(0x24, 0);
  w32(0x20, 1u << 9); /* FLUSH */
  w32(0x24, 1);
  w32(0x20, 1); /* VERSION_1 */
  w32(0x70, 3 | 8);
  if (!(r32(0x70) & 8)) return 12;
  w32(0x30, 0);
  if (r32(0x34) < QN) return 13;
  memset_g(&avail, 0, sizeof avail);
  memset_g(&used, 0, sizeof used);
  next_used = 0;
  w32(0x38, QN);
  w32(0x80, (uint32_t)(uintptr_t)descs);
  w32(0x84, 0);
  w32(0x90, (uint32_t)(uintptr_t)&avail);
  w32(0x94, 0);
  w32(0xa0, (uint32_t)(uintptr_t)&used);
  w32(0xa4, 0);
  w32(0x44, 1);
  w32(0x70, 15);
  return 0;
}

/* Makes `head` available, notifies, waits for it to be used; returns the used length. */
static uint32_t submit(uint16_t head) {
  avail.ring[avail.idx % QN] = head;
  __asm__ volatile("" ::: "memory");
  *(volatile uint16_t*)&avail.idx = (uint16_t)(avail.idx + 1);
  __asm__ volatile("mfence" ::: "memory");
  w32(0x50, 0);
  while (*(volatile uint16_t*)&used.idx == next_used) __asm__ volatile("pause");
  uint32_t len = used.ring[next_used % QN].len;
  ++next_used;
  return len;
}

/* A well-formed request; returns its status byte (0xee if the device did not write it). */
static uint8_t request(uint32_t type, uint64_t sector, void* data, uint32_t len,
                       int device_writes) {
  hdr.type = type;
  hdr.sector = sector;
  status = 0xee;
  descs[0] = (struct desc){(uint64_t)(uintptr_t)&hdr, 16, 1, 1};
  if (len) {
    descs[1] =
        (struct desc){(uint64_t)(uintptr_t)data, len, (uint16_t)(1 | (device_writes ? 2 : 0)), 2};
    descs[2] = (struct desc){(uint64_t)(uintptr_t)&status, 1, 2, 0};
  } else {
    descs[0].next = 2;
    descs[2] = (struct desc){(uint64_t)(uintptr_t)&status, 1, 2, 0};
  }
  submit(0);
  return status;
}

static int rw(void) {
  uint64_t cap = r32(0x100) | ((uint64_t)r32(0x104) << 32);
  puts_uart("capacity: ");
  put_hex(cap, 8);
  puts_uart("\n");
  if (request(0, 0, buf, 512, 1) != 0) return 20;
  puts_uart("sector0: ");
  for (int i = 0; i < 32 && buf[i] >= ' ' && buf[i] < 127; ++i) putc_uart((char)buf[i]);
  puts_uart("\n");
  const char* msg = "written by the guest";
  memset_g(buf, 0, 512);
  for (int i = 0; msg[i]; ++i) buf[i] = (uint8_t)msg[i];
  buf[511] = 0x5a;
  if (request(1, 1, buf, 512, 0) != 0) return 21;
  if (request(4, 0, 0, 0, 0) != 0) return 22;
  memset_g(buf, 0, 512);
  if (request(0, 1, buf, 512, 1) != 0 || buf[0] != 'w' || buf[511] != 0x5a) return 23;
  memset_g(buf, 0, 32);
  if (request(8, 0, buf, 20, 1) != 0) return 24;
  puts_uart("id: ");
  for (int i = 0; i < 20 && buf[i]; ++i) putc_uart((char)buf[i]);
  puts_uart("\n");
  uint8_t st = request(0, cap, buf, 512, 1); /* one past the end */
  puts_uart("past-end status: ");
  put_hex(st, 2);
  puts_uart("\n");
  if (st != 1) return 25;
  if (request(0, 0, buf, 100, 1) != 1) return 26;  /* not a whole sector */
  if (request(1, 2, buf, 512, 1) != 1) return 27;  /* OUT into a device-writable buffer */
  if (request(77, 0, buf, 512, 1) != 2) return 28; /* unknown type: UNSUPP */
  puts_uart("rw ok\n");
  return 0;
}

static int evil(void) {
  /* 1: a descriptor loop 0 -> 1 -> 0 */
  descs[0] = (struct desc){(uint64_t)(uintptr_t)&hdr, 16, 1, 1};
  descs[1] = (struct desc){(uint64_t)(uintptr_t)buf, 512, 1 | 2, 0};
  if (submit(0) != 0) return 30;
  /* 2: a buffer outside guest memory */
  hdr.type = 0;
  hdr.sector = 0;
  descs[0] = (struct desc){(uint64_t)(uintptr_t)&hdr, 16, 1, 1};
  descs[1] = (struct desc){0x7ffffffff000ull, 512, 1 | 2, 2};
  descs[2] = (struct desc){(uint64_t)(uintptr_t)&status, 1, 2, 0};
  if (submit(0) != 0) return 31;
  /* 3: a huge length that wraps around */
  descs[1] = (struct desc){(uint64_t)(uintptr_t)buf, 0xffffffffu, 1 | 2, 2};
  if (submit(0) != 0) return 32;
  /* 4: a next index beyond the queue */
  descs[1] = (struct desc){(uint64_t)(uintptr_t)buf, 512, 1 | 2, 200};
  if (submit(0) != 0) return 33;
  /* 5: an indirect descriptor (not negotiated) */
  descs[0] = (struct desc){(uint64_t)(uintptr_t)buf, 64, 4, 0};
  if (submit(0) != 0) return 34;
  puts_uart("evil chains returned unused\n");
  /* 6: a head index out of range breaks the queue: the device must ask for a reset */
  avail.ring[avail.idx % QN] = 1000;
  *(volatile uint16_t*)&avail.idx = (uint16_t)(avail.idx + 1);
  __asm__ volatile("mfence" ::: "memory");
  w32(0x50, 0);
  for (int i = 0; !(r32(0x70) & 0x40); ++i)
    if (i > 100000000) return 35;
  puts_uart("device needs reset\n");
  /* After a reset the device works again. */
  int e = init_dev();
  if (e) return e;
  if (request(0, 0, buf, 512, 1) != 0) return 36;
  puts_uart("evil ok\n");
  return 0;
}

static void print_sector(const char* label) {
  puts_uart(label);
  for (int i = 0; i < 32 && buf[i] >= ' ' && buf[i] < 127; ++i) putc_uart((char)buf[i]);
  puts_uart("\n");
}

static void fill(const char* msg) {
  memset_g(buf, 0, 512);
  for (int i = 0; msg[i]; ++i) buf[i] = (uint8_t)msg[i];
}

static int snap(void) {
  fill("before the snapshot");
  if (request(1, 2, buf, 512, 0) != 0) return 40;
  memset_g(buf, 0, 512);
  if (request(0, 2, buf, 512, 1) != 0 || buf[0] != 'b') return 41;
  puts_uart("written\n");
  outb(0xf6, 4); /* BOOT_MARK 4: the snapshot point */
  memset_g(buf, 0, 512);
  if (request(0, 3, buf, 512, 1) != 0) return 42;
  print_sector("sector3: ");
  memset_g(buf, 0, 512);
  if (request(0, 2, buf, 512, 1) != 0) return 43;
  print_sector("sector2: ");
  fill("after the snapshot");
  if (request(1, 3, buf, 512, 0) != 0) return 44;
  memset_g(buf, 0, 512);
  if (request(0, 3, buf, 512, 1) != 0 || buf[0] != 'a') return 45;
  puts_uart("snap ok\n");
  return 0;
}

int guest_main(const uint8_t* bp) {
  map_mmio();
  int e = init_dev();
  if (e) return e;
  const char* mode = cmdline_arg(bp, "mode=");
  if (mode && str_starts(mode, "rw")) return rw();
  if (mode && str_starts(mode, "evil")) return evil();
  if (mode && str_starts(mode, "snap")) return snap();
  return 99;
}
