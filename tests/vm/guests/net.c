/* A polling virtio-mmio network driver for the test guests (the NIC alone at 0xd0000000),
 * guest address 10.0.2.15 on the runner's user-mode network.
 *   mode=arp   check the features and config (MAC, MTU, link up), ask for the gateway's MAC
 *              and print the answer; exit 0
 *   mode=tcp   serve one TCP connection on port 80 (a published port): answer the SYN,
 *              print what the client sent, reply "pong" and close; exit 0
 * The driver answers ARP requests for 10.0.2.15 at any time, as a real stack would. */
#include "guest.h"

#define MMIO 0xd0000000ull
#define QN 8
#define BUF 2048
static inline uint32_t r32(uint64_t off) { return *(volatile uint32_t*)(MMIO + off); }
static inline void w32(uint64_t off, uint32_t v) { *(volatile uint32_t*)(MMIO + off) = v; }
static inline uint8_t r8(uint64_t off) { return *(volatile uint8_t*)(MMIO + off); }

struct desc {
  uint64_t addr;
  uint32_t len;
  uint16_t flags, next;
};
struct vq {
  struct desc descs[QN] __attribute__((aligned(16)));
  struct {
    uint16_t flags, idx, ring[QN], used_event;
  } avail __attribute__((aligned(4)));
  struct {
    uint16_t flags, idx;
    struct {
      uint32_t id, len;
    } ring[QN];
    uint16_t avail_event;
  } used __attribute__((aligned(8)));
  uint16_t next_used;
};
static struct vq rxq, txq;
static uint8_t rx_bufs[QN][BUF], tx_buf[BUF];
static uint64_t pd[512] __attribute__((aligned(4096)));
static uint8_t mac[6], gw_mac[6];
static const uint8_t guest_ip[4] = {10, 0, 2, 15}, gw_ip[4] = {10, 0, 2, 2};

static void map_mmio(void) { /* identity-map 3-4 GiB uncached through PDPT[3] */
  for (uint64_t i = 0; i < 512; ++i) pd[i] = (0xc0000000ull + (i << 21)) | 0x93;
  *(volatile uint64_t*)(0xa000 + 3 * 8) = (uint64_t)(uintptr_t)pd | 3;
  uint64_t cr3;
  __asm__ volatile("mov %%cr3, %0; mov %0, %%cr3" : "=r"(cr3)::"memory");
}
static void mcopy(void* d, const void* s, uint64_t n) {
  volatile uint8_t* dd = (volatile uint8_t*)d;
  const uint8_t* ss = (const uint8_t*)s;
  while (n--) *dd++ = *ss++;
}
static int mequal(const void* a, const void* b, uint64_t n) {
  const uint8_t *x = a, *y = b;
  while (n--)
    if (*x++ != *y++) return 0;
  return 1;
}
static void put16(uint8_t* p, uint16_t v) {
  p[0] = (uint8_t)(v >> 8);
  p[1] = (uint8_t)v;
}
static uint16_t get16(const uint8_t* p) { return (uint16_t)(p[0] << 8 | p[1]); }
static uint32_t get32(const uint8_t* p) { return (uint32_t)get16(p) << 16 | get16(p + 2); }
static void put32(uint8_t* p, uint32_t v) {
  put16(p, (uint16_t)(v >> 16));
  put16(p + 2, (uint16_t)v);
}
static uint32_t sum16(const uint8_t* p, uint32_t n, uint32_t s) {
  for (uint32_t i = 0; i + 1 < n; i += 2) s += get16(p + i);
  if (n & 1) s += (uint32_t)p[n - 1] << 8;
  return s;
}
static uint16_t fold(uint32_t s) {
  while (s >> 16) s = (s & 0xffff) + (s >> 16);
  return (uint16_t)~s;
}

static void setup_queue(uint32_t idx, struct vq* q) {
  memset_g(q, 0, sizeof *q);
  w32(0x30, idx);
  w32(0x38, QN);
  w32(0x80, (uint32_t)(uintptr_t)q->descs);
  w32(0x84, 0);
  w32(0x90, (uint32_t)(uintptr_t)&q->avail);
  w32(0x94, 0);
  w32(0xa0, (uint32_t)(uintptr_t)&q->used);
  w32(0xa4, 0);
  w32(0x44, 1);
}
static void make_avail(struct vq* q, uint16_t head) {
  q->avail.ring[q->avail.idx % QN] = head;
  __asm__ volatile("" ::: "memory");
  *(volatile uint16_t*)&q->avail.idx = (uint16_t)(q->avail.idx + 1);
  __asm__ volatile("mfence" ::: "memory");
}

static int init_dev(void) {
  if (r32(0) != 0x74726976 || r32(4) != 2 || r32(8) != 1) return 10;
  w32(0x70, 0);
  w32(0x70, 3);
  w32(0x14, 0);
  uint32_t f0 = r32(0x10);
  w32(0x14, 1);
  uint32_t f1 = r32(0x10);
  uint32_t want = (1u << 5) | (1u << 15) | (1u << 16) | (1u << 3); /* MAC MRG_RXBUF STATUS MTU */
  if ((f0 & want) != want || !(f1 & 1)) return 11;
  if (f0 & 1) return 12; /* CSUM must not be offered */
  w32(0x24, 0);
  w32(0x20, want);
  w32(0x24, 1);
  w32(0x20, 1);
  w32(0x70, 3 | 8);
  if (!(r32(0x70) & 8)) return 13;
  for (int i = 0; i < 6; ++i) mac[i] = r8(0x100 + i);
  uint16_t status = (uint16_t)(r8(0x106) | r8(0x107) << 8),
           mtu = (uint16_t)(r8(0x10a) | r8(0x10b) << 8);
  puts_uart("mac ");
  for (int i = 0; i < 6; ++i) {
    put_hex(mac[i], 2);
    if (i < 5) putc_uart(':');
  }
  puts_uart(" mtu ");
  put_hex(mtu, 4);
  puts_uart(" status ");
  put_hex(status, 1);
  puts_uart("\n");
  setup_queue(0, &rxq);
  setup_queue(1, &txq);
  for (uint16_t i = 0; i < QN; ++i) {
    rxq.descs[i] = (struct desc){(uint64_t)(uintptr_t)rx_bufs[i], BUF, 2, 0};
    make_avail(&rxq, i);
  }
  w32(0x70, 15);
  w32(0x50, 0); /* buffers posted */
  return 0;
}

static void send_frame(const uint8_t* frame, uint32_t len) {
  memset_g(tx_buf, 0, 12);
  mcopy(tx_buf + 12, frame, len);
  txq.descs[0] = (struct desc){(uint64_t)(uintptr_t)tx_buf, 12 + len, 0, 0};
  make_avail(&txq, 0);
  w32(0x50, 1);
  while (*(volatile uint16_t*)&txq.used.idx == txq.next_used) __asm__ volatile("pause");
  ++txq.next_used;
}

static void eth_header(uint8_t* f, const uint8_t* dst, uint16_t type) {
  mcopy(f, dst, 6);
  mcopy(f + 6, mac, 6);
  put16(f + 12, type);
}

static void send_arp(uint16_t op, const uint8_t* target_mac, const uint8_t* target_ip) {
  static const uint8_t bcast[6] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
  uint8_t f[42];
  eth_header(f, op == 1 ? bcast : target_mac, 0x0806);
  put16(f + 14, 1);
  put16(f + 16, 0x0800);
  f[18] = 6;
  f[19] = 4;
  put16(f + 20, op);
  mcopy(f + 22, mac, 6);
  mcopy(f + 28, guest_ip, 4);
  if (op == 1)
    memset_g(f + 32, 0, 6);
  else
    mcopy(f + 32, target_mac, 6);
  mcopy(f + 38, target_ip, 4);
  send_frame(f, sizeof f);
}

/* The next frame not consumed by ARP handling, copied to `out`; 0 when none came in time. */
static uint32_t recv_frame(uint8_t* out) {
  for (uint64_t spin = 0; spin < 4000000000ull; ++spin) {
    if (*(volatile uint16_t*)&rxq.used.idx == rxq.next_used) {
      __asm__ volatile("pause");
      continue;
    }
    uint32_t id = rxq.used.ring[rxq.next_used % QN].id, len = rxq.used.ring[rxq.next_used % QN].len;
    ++rxq.next_used;
    uint8_t* b = rx_bufs[id % QN];
    uint16_t num_buffers = (uint16_t)(b[10] | b[11] << 8);
    uint32_t n = len > 12 ? len - 12 : 0;
    mcopy(out, b + 12, n);
    make_avail(&rxq, (uint16_t)(id % QN)); /* the buffer goes back */
    w32(0x50, 0);
    if (num_buffers != 1) {
      puts_uart("unexpected num_buffers\n");
      continue;
    }
    if (n >= 42 && get16(out + 12) == 0x0806 && get16(out + 20) == 1 &&
        mequal(out + 38, guest_ip, 4)) {
      send_arp(2, out + 22, out + 28); /* who-has 10.0.2.15: us */
      continue;
    }
    return n;
  }
  return 0;
}

static uint8_t frame[BUF];

static int arp(void) {
  send_arp(1, 0, gw_ip);
  for (;;) {
    uint32_t n = recv_frame(frame);
    if (!n) return 20;
    if (n >= 42 && get16(frame + 12) == 0x0806 && get16(frame + 20) == 2 &&
        mequal(frame + 28, gw_ip, 4)) {
      mcopy(gw_mac, frame + 22, 6);
      puts_uart("arp: 10.0.2.2 is-at ");
      for (int i = 0; i < 6; ++i) {
        put_hex(gw_mac[i], 2);
        if (i < 5) putc_uart(':');
      }
      puts_uart("\n");
      return 0;
    }
  }
}

/* One TCP segment to the peer of `seg` (a received IPv4 TCP frame). */
static void send_tcp(const uint8_t* seg, uint32_t seq, uint32_t ack, uint8_t flags,
                     const char* data, uint32_t dlen) {
  uint8_t f[14 + 20 + 20 + 64];
  eth_header(f, seg + 6, 0x0800);
  uint8_t* ip = f + 14;
  memset_g(ip, 0, 40);
  ip[0] = 0x45;
  put16(ip + 2, (uint16_t)(40 + dlen));
  put16(ip + 6, 0x4000);
  ip[8] = 64;
  ip[9] = 6;
  mcopy(ip + 12, guest_ip, 4);
  mcopy(ip + 16, seg + 26, 4);
  put16(ip + 10, fold(sum16(ip, 20, 0)));
  uint8_t* t = ip + 20;
  mcopy(t, seg + 36, 2);
  mcopy(t + 2, seg + 34, 2); /* swap ports */
  put32(t + 4, seq);
  put32(t + 8, ack);
  t[12] = 5 << 4;
  t[13] = flags;
  put16(t + 14, 65535);
  mcopy(t + 20, data, dlen);
  uint8_t pseudo[12];
  mcopy(pseudo, ip + 12, 8);
  pseudo[8] = 0;
  pseudo[9] = 6;
  put16(pseudo + 10, (uint16_t)(20 + dlen));
  put16(t + 16, fold(sum16(t, 20 + dlen, sum16(pseudo, 12, 0))));
  send_frame(f, 14 + 40 + dlen);
}

static int tcp(void) {
  puts_uart("listening\n");
  uint32_t iss = 5000, rcv = 0;
  int state = 0; /* 0 LISTEN, 1 SYN-RCVD/ESTABLISHED */
  for (;;) {
    uint32_t n = recv_frame(frame);
    if (!n) return 30;
    if (n < 54 || get16(frame + 12) != 0x0800 || frame[23] != 6 || get16(frame + 36) != 80)
      continue;
    uint32_t ihl = (frame[14] & 0xf) * 4u, total = get16(frame + 16);
    const uint8_t* t = frame + 14 + ihl;
    uint32_t off = (t[12] >> 4) * 4u, dlen = total - ihl - off;
    uint8_t flags = t[13];
    uint32_t seq = get32(t + 4);
    if (state == 0 && (flags & 0x02)) {
      rcv = seq + 1;
      send_tcp(frame, iss, rcv, 0x12, 0, 0); /* SYN|ACK */
      state = 1;
      continue;
    }
    if (state == 1 && dlen > 0 && seq == rcv) {
      puts_uart("got: ");
      for (uint32_t i = 0; i < dlen; ++i) putc_uart((char)t[off + i]);
      puts_uart("\n");
      rcv += dlen;
      send_tcp(frame, iss + 1, rcv, 0x18, "pong", 4); /* PSH|ACK */
      send_tcp(frame, iss + 5, rcv, 0x11, 0, 0);      /* FIN|ACK */
      return 0;
    }
  }
}

int guest_main(const uint8_t* bp) {
  map_mmio();
  int e = init_dev();
  if (e) return e;
  const char* mode = cmdline_arg(bp, "mode=");
  if (mode && str_starts(mode, "arp")) return arp();
  if (mode && str_starts(mode, "tcp")) return tcp(); /* slirp asks for our MAC itself */
  return 99;
}
