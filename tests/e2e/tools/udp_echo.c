/* A static UDP echo tool for the networking tests, usable in a busybox guest and in the nested
 * rig's L1 (busybox's nc there has no UDP):
 *   udp_echo serve PORT        prints "listening", then echoes every datagram back to its
 *                              sender and prints it on stdout, until killed
 *   udp_echo send HOST PORT MSG  sends MSG (once a second, up to 20 times) until an answer
 *                              comes back; prints the answer; exit 0, or 1 without one
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static int usage(void) {
  fprintf(stderr, "usage: udp_echo serve PORT | udp_echo send HOST PORT MSG\n");
  return 2;
}

int main(int argc, char** argv) {
  char buf[2048];
  if (argc == 3 && strcmp(argv[1], "serve") == 0) {
    int s = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons((unsigned short)atoi(argv[2]));
    if (s < 0 || bind(s, (struct sockaddr*)&a, sizeof a) != 0) {
      perror("udp_echo: bind");
      return 1;
    }
    printf("listening\n");
    fflush(stdout);
    for (;;) {
      struct sockaddr_in from;
      socklen_t len = sizeof from;
      ssize_t n = recvfrom(s, buf, sizeof buf - 1, 0, (struct sockaddr*)&from, &len);
      if (n < 0) continue;
      /* Said before the answer goes back: a sender that stops this server once it has its
       * answer must not be able to cut the line off. */
      char msg[2048];
      memcpy(msg, buf, (size_t)n);
      msg[n] = 0;
      printf("got %s from %s\n", msg, inet_ntoa(from.sin_addr));
      fflush(stdout);
      sendto(s, buf, (size_t)n, 0, (struct sockaddr*)&from, len);
    }
  }
  if (argc == 5 && strcmp(argv[1], "send") == 0) {
    int s = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in to;
    memset(&to, 0, sizeof to);
    to.sin_family = AF_INET;
    to.sin_port = htons((unsigned short)atoi(argv[3]));
    if (s < 0 || inet_pton(AF_INET, argv[2], &to.sin_addr) != 1) return usage();
    for (int i = 0; i < 20; ++i) {
      sendto(s, argv[4], strlen(argv[4]), 0, (struct sockaddr*)&to, sizeof to);
      struct pollfd p = {s, POLLIN, 0};
      if (poll(&p, 1, 1000) == 1) {
        ssize_t n = recv(s, buf, sizeof buf - 1, 0);
        if (n >= 0) {
          buf[n] = 0;
          printf("answer %s\n", buf);
          return 0;
        }
      }
    }
    fprintf(stderr, "udp_echo: no answer from %s:%s\n", argv[2], argv[3]);
    return 1;
  }
  return usage();
}
