/* For the Linux guests' initramfs: `port_out PORT VALUE` writes one byte to an I/O port (the
 * runner's EXIT, INIT_FAIL and BOOT_MARK ports). Linked statically, runs as root in the guest. */
#include <stdlib.h>
#include <sys/io.h>

int main(int argc, char** argv) {
  if (argc != 3) return 2;
  unsigned long port = strtoul(argv[1], 0, 0), value = strtoul(argv[2], 0, 0);
  if (port > 0x3ff || value > 255 || ioperm(port, 1, 1) != 0) return 1;
  outb((unsigned char)value, (unsigned short)port);
  return 0;
}
