/* Freestanding helpers for the test guests: port I/O, the UART, the command line. */
#pragma once
#include <stdint.h>

static inline void outb(uint16_t port, uint8_t v) {
  __asm__ volatile("outb %0, %1" ::"a"(v), "Nd"(port));
}
static inline uint8_t inb(uint16_t port) {
  uint8_t v;
  __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port));
  return v;
}
static inline uint32_t inl(uint16_t port) {
  uint32_t v;
  __asm__ volatile("inl %1, %0" : "=a"(v) : "Nd"(port));
  return v;
}
static inline void putc_uart(char c) {
  while (!(inb(0x3f8 + 5) & 0x20)) {
  }
  outb(0x3f8, (uint8_t)c);
}
static inline void puts_uart(const char* s) {
  while (*s) putc_uart(*s++);
}
static inline void put_hex(uint64_t v, int digits) {
  for (int i = digits - 1; i >= 0; --i) putc_uart("0123456789abcdef"[(v >> (4 * i)) & 0xf]);
}
static inline int str_starts(const char* s, const char* p) {
  while (*p)
    if (*s++ != *p++) return 0;
  return 1;
}
/* The value of "key=" on the command line (boot_params at rsi, cmd_line_ptr at 0x228). */
static inline const char* cmdline_arg(const uint8_t* boot_params, const char* key) {
  const char* s = (const char*)(uintptr_t)(*(const uint32_t*)(boot_params + 0x228));
  while (*s) {
    while (*s == ' ') ++s;
    if (str_starts(s, key)) return s + __builtin_strlen(key);
    while (*s && *s != ' ') ++s;
  }
  return 0;
}
static inline unsigned parse_uint(const char* s) {
  unsigned v = 0;
  while (s && *s >= '0' && *s <= '9') v = v * 10 + (unsigned)(*s++ - '0');
  return v;
}
static inline void memset_g(void* p, int c, uint64_t n) {
  volatile uint8_t* d = (volatile uint8_t*)p;
  while (n--) *d++ = (uint8_t)c;
}
