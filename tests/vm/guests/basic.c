/* The basic test guest: what it does is chosen by "mode=" on its command line.
 *   mode=hello      print a line on the UART, exit 42
 *   mode=stderr     a line on COM1, one on COM2 (0x2f8), another on COM1, exit 0
 *   mode=exit:N     exit with status N
 *   mode=initfail:N report an init failure with code N
 *   mode=marks      write both boot marks, then exit 0
 *   mode=reset      ask the i8042 for a reset (no exit status)
 *   mode=triple     triple-fault: an empty IDT and an exception
 *   mode=echo       echo UART input until it reads 'q', then exit 0
 *   mode=eof        count UART input until the host reports its end (SIGNAL 0x82) and every byte
 *                   of STDIN_BYTES has arrived; print the count, exit with it (mod 256), or 96
 *                   when the end was reported twice
 *   mode=hang       cli; hlt forever (for timeouts and stop())
 *   mode=snap       sum 0..999 into memory, set COM2's scratch register to 0x5a, print
 *                   "before", write the snapshot point mark (BOOT_MARK 4), add 1, print
 *                   "after", the sum in hex (0x79f2d) and the scratch register, exit 7 */
#include "guest.h"

int guest_main(const uint8_t* bp) {
  const char* mode = cmdline_arg(bp, "mode=");
  if (!mode) return 99;
  if (str_starts(mode, "hello")) {
    puts_uart("hello from the guest\n");
    return 42;
  }
  if (str_starts(mode, "stderr")) {
    puts_uart("to COM1\n");
    for (const char* s = "to COM2\n"; *s; ++s) {
      while (!(inb(0x2f8 + 5) & 0x20)) {
      }
      outb(0x2f8, (uint8_t)*s);
    }
    puts_uart("COM1 again\n");
    return 0;
  }
  if (str_starts(mode, "exit:")) return (int)parse_uint(mode + 5);
  if (str_starts(mode, "initfail:")) {
    outb(0xf5, (uint8_t)parse_uint(mode + 9));
    return 98;
  }
  if (str_starts(mode, "marks")) {
    outb(0xf6, 1);
    outb(0xf6, 2);
    return 0;
  }
  if (str_starts(mode, "reset")) {
    outb(0x64, 0xfe);
    for (;;) __asm__ volatile("hlt");
  }
  if (str_starts(mode, "triple")) {
    struct __attribute__((packed)) {
      uint16_t limit;
      uint64_t base;
    } idt = {0, 0};
    __asm__ volatile("lidt %0; ud2" ::"m"(idt));
  }
  if (str_starts(mode, "echo")) {
    puts_uart("ready\n");
    for (;;) {
      while (!(inb(0x3f8 + 5) & 1)) {
      }
      char c = (char)inb(0x3f8);
      if (c == 'q') return 0;
      putc_uart(c >= 'a' && c <= 'z' ? (char)(c - 32) : c);
    }
  }
  if (str_starts(mode, "eof")) {
    uint32_t got = 0, total = 0;
    int ended = 0;
    for (;;) {
      if (inb(0x3f8 + 5) & 1) {
        (void)inb(0x3f8);
        ++got;
        continue;
      }
      uint8_t req = inb(0xf7);
      if (req == 0x82) {
        if (ended) return 96;
        ended = 1;
        total = inl(0xfc);
      }
      if (ended && got == total) {
        if (inb(0xf7) == 0x82) return 96;
        puts_uart("eof after ");
        put_hex(got, 4);
        puts_uart("\n");
        return (int)(got & 0xff);
      }
    }
  }
  if (str_starts(mode, "snap")) {
    static volatile uint64_t sum;  // in guest RAM: a restore must bring it back
    for (uint64_t i = 0; i < 1000; ++i) sum += i;
    outb(0x2f8 + 7, 0x5a);  // COM2's scratch register: a restore must bring it back too
    puts_uart("before\n");
    outb(0xf6, 4);
    sum += 1;
    puts_uart("after ");
    put_hex(sum, 8);
    puts_uart(" ");
    put_hex(inb(0x2f8 + 7), 2);
    puts_uart("\n");
    return 7;
  }
  if (str_starts(mode, "hang")) {
    for (;;) __asm__ volatile("cli; hlt");
  }
  return 97;
}
