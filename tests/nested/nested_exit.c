/* Inside the nested rig's L1 guest: ends qemu with an exit status through its isa-debug-exit
 * device at port 0xf4 (qemu then exits with (N << 1) | 1). Usage: nested-exit N */
#include <stdlib.h>
#include <sys/io.h>

int main(int argc, char** argv) {
  int code = argc > 1 ? atoi(argv[1]) : 0;
  if (ioperm(0xf4, 1, 1) != 0) return 1;
  outb((unsigned char)code, 0xf4);
  return 0;
}
