/*
 * Test workload for precog's live-memory tests and benchmarks: a process with a buffer of known contents that
 * writes pages on command. Every 8-byte word w of page i written with tag t holds (t << 48) | (i << 16) | w, so
 * a reader can compute what any page must contain.
 *
 * usage: writer MIB
 * prints "ready ADDR PAGES" (ADDR in hex) once the buffer is allocated and filled with tag 1, then reads
 * commands from stdin, one per line, and answers each with one line:
 *   write TAG I J K ...     write pages I, J, K ... with TAG                 -> "done N"
 *   every TAG STEP [FROM]   write pages FROM, FROM+STEP, ... with TAG         -> "done N"
 *   read I J K ...          read one word of each page (no write)             -> "done N"
 *   unmap I N               munmap pages I..I+N-1 of the buffer               -> "done N"
 *   map N                   mmap and touch N new pages elsewhere              -> "done ADDR"
 *   spin STEP               write pages 0, STEP, 2*STEP ... round robin with increasing tags until the next
 *                           command arrives; answers "spinning" at once
 *   quit                                                                      -> exits 0
 */
#define _GNU_SOURCE
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define PAGE 4096UL

static uint8_t *buf;
static unsigned long pages;

static void fill(unsigned long i, uint64_t tag) {
  volatile uint64_t *w = (volatile uint64_t *)(buf + i * PAGE);
  for (uint64_t k = 0; k < PAGE / 8; k++) w[k] = (tag << 48) | ((uint64_t)i << 16) | k;
}

static int stdin_ready(void) {
  struct pollfd p = {.fd = 0, .events = POLLIN};
  return poll(&p, 1, 0) > 0;
}

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: writer MIB\n");
    return 2;
  }
  pages = strtoul(argv[1], NULL, 10) * 256;
  buf = mmap(NULL, pages * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (buf == MAP_FAILED) {
    perror("mmap");
    return 1;
  }
  for (unsigned long i = 0; i < pages; i++) fill(i, 1);
  printf("ready %lx %lu\n", (unsigned long)buf, pages);
  fflush(stdout);
  char line[1 << 16];
  while (fgets(line, sizeof line, stdin)) {
    char *save = NULL;
    char *cmd = strtok_r(line, " \n", &save);
    if (!cmd) continue;
    if (!strcmp(cmd, "quit")) return 0;
    if (!strcmp(cmd, "write") || !strcmp(cmd, "read")) {
      int write = cmd[0] == 'w';
      uint64_t tag = write ? strtoull(strtok_r(NULL, " \n", &save), NULL, 10) : 0;
      unsigned long n = 0;
      volatile uint64_t sink = 0;
      for (char *t; (t = strtok_r(NULL, " \n", &save));) {
        unsigned long i = strtoul(t, NULL, 10);
        if (i >= pages) continue;
        if (write) fill(i, tag);
        else sink += *(volatile uint64_t *)(buf + i * PAGE);
        n++;
      }
      (void)sink;
      printf("done %lu\n", n);
    } else if (!strcmp(cmd, "every")) {
      uint64_t tag = strtoull(strtok_r(NULL, " \n", &save), NULL, 10);
      unsigned long step = strtoul(strtok_r(NULL, " \n", &save), NULL, 10);
      char *f = strtok_r(NULL, " \n", &save);
      unsigned long n = 0;
      for (unsigned long i = f ? strtoul(f, NULL, 10) : 0; i < pages; i += step, n++) fill(i, tag);
      printf("done %lu\n", n);
    } else if (!strcmp(cmd, "unmap")) {
      unsigned long i = strtoul(strtok_r(NULL, " \n", &save), NULL, 10);
      unsigned long n = strtoul(strtok_r(NULL, " \n", &save), NULL, 10);
      munmap(buf + i * PAGE, n * PAGE);
      printf("done %lu\n", n);
    } else if (!strcmp(cmd, "map")) {
      unsigned long n = strtoul(strtok_r(NULL, " \n", &save), NULL, 10);
      uint8_t *m = mmap(NULL, n * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      for (unsigned long i = 0; i < n; i++) m[i * PAGE] = 1;
      printf("done %lx\n", (unsigned long)m);
    } else if (!strcmp(cmd, "spin")) {
      unsigned long step = strtoul(strtok_r(NULL, " \n", &save), NULL, 10);
      printf("spinning\n");
      fflush(stdout);
      for (uint64_t tag = 2, i = 0, n = 1;; i += step, n++) {
        if (i >= pages) i = 0, tag++;
        fill(i, tag);
        if ((n & 63) == 0 && stdin_ready()) break;
      }
      continue;
    } else {
      printf("error unknown command %s\n", cmd);
    }
    fflush(stdout);
  }
  return 0;
}
