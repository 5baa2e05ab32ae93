/* The only file of a "FROM scratch" test image, built with musl-gcc -static: it shows that the
 * init runs a workload in an image with no shell, no libc of its own, no /etc and no /dev. */
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

int main(int argc, char** argv) {
  char cwd[256];
  const char* path = getenv("PATH");
  printf("scratch hello from %s: uid=%d cwd=%s args=%d PATH=%s\n", argv[0], (int)getuid(),
         getcwd(cwd, sizeof cwd) ? cwd : "?", argc, path ? path : "(unset)");
  return 4;
}
