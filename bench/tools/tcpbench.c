/* A small TCP load tool for the benchmarks, so that Python's own speed does not hide the datapath's.
 *
 *   tcpbench server PORT                  echo server (one thread per connection)
 *   tcpbench rr  IP PORT SECONDS          one connection, 1-byte request/response ping-pong
 *   tcpbench crr IP PORT SECONDS THREADS  connect, 1-byte request/response, close; repeated
 *
 * Clients print one number: completed transactions per second. IP may be IPv4 or IPv6; the server
 * listens on both (an IPv6 socket that also takes IPv4).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static struct sockaddr_storage target;
static socklen_t target_len;
static double deadline;
static atomic_long completed;

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void *echo_conn(void *arg)
{
	int fd = (int)(long)arg;
	char buf[65536];
	ssize_t n;
	int one = 1;

	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	while ((n = read(fd, buf, sizeof(buf))) > 0)
		if (write(fd, buf, n) != n)
			break;
	close(fd);
	return NULL;
}

static int serve(int port)
{
	int fd = socket(AF_INET6, SOCK_STREAM, 0), one = 1, zero = 0;
	struct sockaddr_in6 addr = { .sin6_family = AF_INET6, .sin6_port = htons(port), .sin6_addr = in6addr_any };

	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof(zero));
	if (bind(fd, (struct sockaddr *)&addr, sizeof(addr)) || listen(fd, 4096)) {
		perror("listen");
		return 1;
	}
	printf("ready\n");
	fflush(stdout);
	for (;;) {
		int conn = accept(fd, NULL, NULL);
		pthread_t thread;
		if (conn < 0)
			continue;
		pthread_create(&thread, NULL, echo_conn, (void *)(long)conn);
		pthread_detach(thread);
	}
}

static int exchange(int fd)
{
	char byte = 'x';
	return write(fd, &byte, 1) == 1 && read(fd, &byte, 1) == 1;
}

static int rr(double seconds)
{
	int fd = socket(target.ss_family, SOCK_STREAM, 0), one = 1;
	long count = 0;

	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	if (connect(fd, (struct sockaddr *)&target, target_len)) {
		perror("connect");
		return 1;
	}
	double start = now(), end = start + seconds;
	while (now() < end && exchange(fd))
		count++;
	printf("%.1f\n", count / (now() - start));
	close(fd);
	return 0;
}

static void *crr_worker(void *unused)
{
	(void)unused;
	while (now() < deadline) {
		int fd = socket(target.ss_family, SOCK_STREAM, 0), one = 1;
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
		if (connect(fd, (struct sockaddr *)&target, target_len) == 0 && exchange(fd))
			atomic_fetch_add(&completed, 1);
		close(fd);
	}
	return NULL;
}

static int crr(double seconds, int threads)
{
	pthread_t ids[64];
	double start = now();

	deadline = start + seconds;
	if (threads > 64)
		threads = 64;
	for (int i = 0; i < threads; i++)
		pthread_create(&ids[i], NULL, crr_worker, NULL);
	for (int i = 0; i < threads; i++)
		pthread_join(ids[i], NULL);
	printf("%.1f\n", atomic_load(&completed) / (now() - start));
	return 0;
}

int main(int argc, char **argv)
{
	if (argc >= 3 && !strcmp(argv[1], "server"))
		return serve(atoi(argv[2]));
	if (argc < 5) {
		fprintf(stderr, "usage: tcpbench server PORT | rr IP PORT SECONDS | crr IP PORT SECONDS THREADS\n");
		return 2;
	}
	struct sockaddr_in *v4 = (struct sockaddr_in *)&target;
	struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)&target;
	if (inet_pton(AF_INET, argv[2], &v4->sin_addr) == 1) {
		v4->sin_family = AF_INET;
		v4->sin_port = htons(atoi(argv[3]));
		target_len = sizeof(*v4);
	} else if (inet_pton(AF_INET6, argv[2], &v6->sin6_addr) == 1) {
		v6->sin6_family = AF_INET6;
		v6->sin6_port = htons(atoi(argv[3]));
		target_len = sizeof(*v6);
	} else {
		fprintf(stderr, "tcpbench: %s is not an IP address\n", argv[2]);
		return 2;
	}
	if (!strcmp(argv[1], "rr"))
		return rr(atof(argv[4]));
	if (!strcmp(argv[1], "crr"))
		return crr(atof(argv[4]), argc > 5 ? atoi(argv[5]) : 1);
	return 2;
}
