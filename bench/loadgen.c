// kaproxy bench: the load generators and the upstream server, in one small C program.
// Compiled by bench/run.ts with the machine's gcc; talks to loopback only.
//
//   loadgen server PORT                        upstream: a connection whose first byte is 'S' is a sink
//                                              (read and discard, close at EOF), 'D' a source (writes
//                                              256 KiB chunks until the peer goes); any other is an echo
//   loadgen bulk PORT STREAMS SECONDS up       send 'S' + 256 KiB writes for SECONDS on each stream, then
//                                              shutdown(SHUT_WR) and wait for the upstream's close
//   loadgen bulk PORT STREAMS SECONDS down     send 'D': the upstream writes as fast as it can; count what
//                                              arrives for SECONDS, then close
//   loadgen pingpong PORT SIZE SECONDS         one connection, SIZE-byte request/echo, latency percentiles
//   loadgen cec PORT CLIENTS SECONDS           CLIENTS threads: connect, send 64 B, read the echo, close
//   loadgen idle PORT COUNT                    open COUNT connections (each checked with a 1-byte echo),
//                                              print "open", hold them until stdin closes or says a line
//
// Each client mode prints one JSON line with its result and its own CPU time (getrusage), so the
// runner can show that the generator is not what limits a proxied run.
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double now_sec(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + ts.tv_nsec;
}

static double cpu_sec(void) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
}

static struct sockaddr_in addr_of(int port) {
  struct sockaddr_in sa;
  memset(&sa, 0, sizeof sa);
  sa.sin_family = AF_INET;
  sa.sin_port = htons(port);
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  return sa;
}

static int dial(int port) {
  struct sockaddr_in sa = addr_of(port);
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) { close(fd); return -1; }
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  return fd;
}

static int write_all(int fd, const char *p, size_t n) {
  while (n > 0) {
    ssize_t w = write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) { struct pollfd pf = { fd, POLLOUT, 0 }; poll(&pf, 1, 1000); continue; }
      return -1;
    }
    p += w; n -= (size_t)w;
  }
  return 0;
}

static int read_full(int fd, char *p, size_t n) {
  while (n > 0) {
    ssize_t r = read(fd, p, n);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return -1;
    p += r; n -= (size_t)r;
  }
  return 0;
}

// ---- upstream server: epoll, one thread ----
enum { UNKNOWN = 0, SINK = 1, ECHO = 2, SOURCE = 3 };
static unsigned char *kind; // per fd

static int server(int port) {
  static char buf[1 << 18];
  kind = calloc(1 << 20, 1);
  int ls = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  int one = 1;
  setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  struct sockaddr_in sa = addr_of(port);
  if (bind(ls, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(ls, 4096) < 0) { perror("server"); return 1; }
  int ep = epoll_create1(EPOLL_CLOEXEC);
  struct epoll_event ev = { .events = EPOLLIN, .data.fd = ls };
  epoll_ctl(ep, EPOLL_CTL_ADD, ls, &ev);
  printf("ready\n");
  fflush(stdout);
  struct epoll_event events[256];
  for (;;) {
    int n = epoll_wait(ep, events, 256, -1);
    for (int i = 0; i < n; i++) {
      int fd = events[i].data.fd;
      if (fd != ls && kind[fd] == SOURCE && (events[i].events & EPOLLOUT)) {
        ssize_t w = 0;
        for (int k = 0; k < 4 && (w = write(fd, buf, sizeof buf)) > 0; k++) {}
        if (w < 0 && errno != EAGAIN && errno != EINTR) { epoll_ctl(ep, EPOLL_CTL_DEL, fd, NULL); close(fd); }
        continue;
      }
      if (fd == ls) {
        for (;;) {
          int c = accept4(ls, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
          if (c < 0) break;
          setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
          kind[c] = UNKNOWN;
          struct epoll_event cev = { .events = EPOLLIN, .data.fd = c };
          epoll_ctl(ep, EPOLL_CTL_ADD, c, &cev);
        }
        continue;
      }
      ssize_t r = read(fd, buf, sizeof buf);
      if (r < 0 && (errno == EAGAIN || errno == EINTR)) continue;
      if (r <= 0) { epoll_ctl(ep, EPOLL_CTL_DEL, fd, NULL); close(fd); continue; }
      char *p = buf;
      if (kind[fd] == UNKNOWN) {
        kind[fd] = buf[0] == 'S' ? SINK : buf[0] == 'D' ? SOURCE : ECHO;
        if (kind[fd] == SOURCE) {
          struct epoll_event sev = { .events = EPOLLIN | EPOLLOUT, .data.fd = fd };
          epoll_ctl(ep, EPOLL_CTL_MOD, fd, &sev);
        }
      }
      // Echo replies are small (requests of at most a few hundred bytes); a short write waits here.
      if (kind[fd] == ECHO && write_all(fd, p, (size_t)r) < 0) { epoll_ctl(ep, EPOLL_CTL_DEL, fd, NULL); close(fd); }
    }
  }
}

// ---- bulk ----
struct bulk_arg { int port; double seconds; int down; uint64_t bytes; int ok; };
static char bulk_buf[1 << 18];

static void *bulk_stream(void *p) {
  struct bulk_arg *a = p;
  int fd = dial(a->port);
  if (fd < 0) return NULL;
  double end = now_sec() + a->seconds;
  if (a->down) {
    static __thread char in[1 << 18];
    if (write_all(fd, "D", 1) < 0) { close(fd); return NULL; }
    while (now_sec() < end) {
      ssize_t r = read(fd, in, sizeof in);
      if (r < 0 && errno == EINTR) continue;
      if (r <= 0) { close(fd); return NULL; }
      a->bytes += (uint64_t)r;
    }
    close(fd);
    a->ok = 1;
    return NULL;
  }
  bulk_buf[0] = 'S';
  while (now_sec() < end) {
    ssize_t w = write(fd, bulk_buf, sizeof bulk_buf);
    if (w < 0) { if (errno == EINTR) continue; close(fd); return NULL; }
    a->bytes += (uint64_t)w;
  }
  shutdown(fd, SHUT_WR);
  char c;
  while (read(fd, &c, 1) > 0) {}
  close(fd);
  a->ok = 1;
  return NULL;
}

static int bulk(int port, int streams, double seconds, int down) {
  pthread_t t[64];
  struct bulk_arg a[64];
  if (streams > 64) streams = 64;
  double c0 = cpu_sec(), t0 = now_sec();
  for (int i = 0; i < streams; i++) { a[i] = (struct bulk_arg){ port, seconds, down, 0, 0 }; pthread_create(&t[i], NULL, bulk_stream, &a[i]); }
  uint64_t bytes = 0; int ok = 0;
  for (int i = 0; i < streams; i++) { pthread_join(t[i], NULL); bytes += a[i].bytes; ok += a[i].ok; }
  double wall = now_sec() - t0, cpu = cpu_sec() - c0;
  printf("{\"bytes\":%llu,\"seconds\":%.4f,\"gbps\":%.4f,\"streamsOk\":%d,\"genCpuSec\":%.4f}\n",
         (unsigned long long)bytes, wall, bytes * 8 / wall / 1e9, ok, cpu);
  return ok == streams ? 0 : 1;
}

// ---- ping-pong ----
static int cmp_u64(const void *x, const void *y) {
  uint64_t a = *(const uint64_t *)x, b = *(const uint64_t *)y;
  return a < b ? -1 : a > b;
}

static int pingpong(int port, int size, double seconds) {
  int fd = dial(port);
  if (fd < 0) { perror("pingpong connect"); return 1; }
  char *msg = malloc((size_t)size), *in = malloc((size_t)size);
  memset(msg, 'p', (size_t)size);
  size_t cap = 4000000, n = 0;
  uint64_t *s = malloc(cap * sizeof *s);
  for (int i = 0; i < 2000; i++) { // warm-up, not recorded
    if (write_all(fd, msg, (size_t)size) < 0 || read_full(fd, in, (size_t)size) < 0) { perror("pingpong"); return 1; }
  }
  double c0 = cpu_sec(), t0 = now_sec(), end = t0 + seconds;
  while (n < cap) {
    uint64_t a = now_ns();
    if (write_all(fd, msg, (size_t)size) < 0 || read_full(fd, in, (size_t)size) < 0) { perror("pingpong"); return 1; }
    s[n++] = now_ns() - a;
    if ((n & 63) == 0 && now_sec() >= end) break;
  }
  double wall = now_sec() - t0, cpu = cpu_sec() - c0;
  close(fd);
  qsort(s, n, sizeof *s, cmp_u64);
  printf("{\"rounds\":%zu,\"p50us\":%.2f,\"p99us\":%.2f,\"p999us\":%.2f,\"maxus\":%.2f,\"seconds\":%.4f,\"genCpuSec\":%.4f}\n",
         n, s[n / 2] / 1e3, s[(size_t)(n * 0.99)] / 1e3, s[(size_t)(n * 0.999)] / 1e3, s[n - 1] / 1e3, wall, cpu);
  return 0;
}

// ---- connect-echo-close ----
struct cec_arg { int port; double end; uint64_t ok, failed; };

static void *cec_client(void *p) {
  struct cec_arg *a = p;
  char msg[64], in[64];
  memset(msg, 'c', sizeof msg);
  while (now_sec() < a->end) {
    int fd = dial(a->port);
    if (fd < 0) { a->failed++; usleep(1000); continue; }
    if (write_all(fd, msg, sizeof msg) < 0 || read_full(fd, in, sizeof in) < 0) a->failed++;
    else a->ok++;
    close(fd);
  }
  return NULL;
}

static int cec(int port, int clients, double seconds) {
  pthread_t t[256];
  struct cec_arg a[256];
  if (clients > 256) clients = 256;
  double c0 = cpu_sec(), t0 = now_sec();
  for (int i = 0; i < clients; i++) { a[i] = (struct cec_arg){ port, t0 + seconds, 0, 0 }; pthread_create(&t[i], NULL, cec_client, &a[i]); }
  uint64_t ok = 0, failed = 0;
  for (int i = 0; i < clients; i++) { pthread_join(t[i], NULL); ok += a[i].ok; failed += a[i].failed; }
  double wall = now_sec() - t0, cpu = cpu_sec() - c0;
  printf("{\"connections\":%llu,\"failed\":%llu,\"seconds\":%.4f,\"perSec\":%.1f,\"genCpuSec\":%.4f}\n",
         (unsigned long long)ok, (unsigned long long)failed, wall, ok / wall, cpu);
  return 0;
}

// ---- idle ----
static int idle(int port, int count) {
  int *fds = malloc(sizeof(int) * (size_t)count);
  int open = 0, failed = 0;
  double t0 = now_sec();
  for (int i = 0; i < count; i++) {
    int fd = dial(port);
    char c = 'i';
    if (fd < 0 || write_all(fd, &c, 1) < 0 || read_full(fd, &c, 1) < 0) { failed++; if (fd >= 0) close(fd); continue; }
    fds[open++] = fd;
  }
  printf("{\"open\":%d,\"failed\":%d,\"openSeconds\":%.3f}\n", open, failed, now_sec() - t0);
  fflush(stdout);
  char line[64];
  if (fgets(line, sizeof line, stdin) == NULL) {}
  // Every connection must still be relayed after the idle period.
  int alive = 0;
  for (int i = 0; i < open; i++) {
    char c = 'j';
    if (write_all(fds[i], &c, 1) == 0 && read_full(fds[i], &c, 1) == 0) alive++;
  }
  for (int i = 0; i < open; i++) close(fds[i]);
  printf("{\"aliveAfterIdle\":%d}\n", alive);
  return 0;
}

int main(int argc, char **argv) {
  if (argc < 3) { fprintf(stderr, "usage: see the comment at the top of loadgen.c\n"); return 2; }
  signal(SIGPIPE, SIG_IGN);
  const char *mode = argv[1];
  int port = atoi(argv[2]);
  if (strcmp(mode, "server") == 0) return server(port);
  if (strcmp(mode, "bulk") == 0 && argc == 6) return bulk(port, atoi(argv[3]), atof(argv[4]), strcmp(argv[5], "down") == 0);
  if (strcmp(mode, "pingpong") == 0 && argc == 5) return pingpong(port, atoi(argv[3]), atof(argv[4]));
  if (strcmp(mode, "cec") == 0 && argc == 5) return cec(port, atoi(argv[3]), atof(argv[4]));
  if (strcmp(mode, "idle") == 0 && argc == 4) return idle(port, atoi(argv[3]));
  fprintf(stderr, "bad arguments\n");
  return 2;
}
