/* A paced UDP sender for the benchmarks: many small datagrams whose ports vary, so that every packet
 * belongs to a different flow, sent in sendmmsg batches so that the sender's own cost stays small next
 * to the datapath's.
 *
 *   udpspray IP [--rate PPS] [--seconds S] [--count N] [--port-base P] [--ports N] [--sockets N]
 *               [--batch N] [--size BYTES]
 *
 *   --rate PPS     packets per second (0, the default: as fast as it goes)
 *   --seconds S    stop after S seconds (at most 600)
 *   --count N      stop after N packets
 *                  at least one of --seconds and --count is required; both bound the run
 *   --port-base P  first destination port (default 10000)
 *   --ports N      destination ports cycled through (default 1000)
 *   --sockets N    sending sockets, each with its own source port (default 16)
 *   --batch N      datagrams per sendmmsg call (default: rate / 1000 within 1..64; 64 unpaced)
 *   --size BYTES   payload bytes (default 16)
 *
 *   udpspray IP --tcp-syn PORT
 *
 *   one TCP SYN instead (a non-blocking connect abandoned after 200 ms, before any retransmission):
 *   the benchmarks' end-of-run marker, a flow with a known destination port.
 *
 * Destinations must be loopback, private (RFC 1918), link-local or shared (100.64/10) addresses: the
 * tool is meant for namespaces a benchmark built, never for a real network.
 *
 * Prints one JSON line when done: {"sent", "errors", "seconds", "pps", "target_pps", "batch",
 * "cpu_seconds"}. Exit status 0 when at least one datagram went out.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_BATCH 64
#define MAX_SOCKETS 256
#define MAX_SECONDS 600.0
#define MAX_SIZE 1400

static volatile sig_atomic_t stop_requested;

static void on_signal(int sig)
{
	(void)sig;
	stop_requested = 1;
}

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void sleep_until(double when)
{
	struct timespec ts;
	ts.tv_sec = (time_t)when;
	ts.tv_nsec = (long)((when - (double)ts.tv_sec) * 1e9);
	while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR && !stop_requested)
		;
}

static double cpu_seconds(void)
{
	struct rusage ru;
	getrusage(RUSAGE_SELF, &ru);
	return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
}

/* Loopback, RFC 1918, link-local, shared address space: addresses a test namespace may use. */
static int allowed_destination(struct in_addr addr)
{
	uint32_t a = ntohl(addr.s_addr);

	return (a >> 24) == 127 || (a >> 24) == 10 || (a >> 20) == (172u << 4 | 1) || (a >> 16) == (192u << 8 | 168) ||
	       (a >> 16) == (169u << 8 | 254) || (a >> 22) == (100u << 2 | 1);
}

static int tcp_syn(struct in_addr dst, long port)
{
	struct sockaddr_in addr = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port), .sin_addr = dst };
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
	int rc;

	if (fd < 0) {
		perror("socket");
		return 1;
	}
	rc = connect(fd, (struct sockaddr *)&addr, sizeof(addr));
	if (rc != 0 && errno != EINPROGRESS) {
		perror("connect");
		close(fd);
		return 1;
	}
	usleep(200000);
	close(fd);
	printf("{\"tcp_syn\": 1}\n");
	return 0;
}

static int usage(const char *argv0)
{
	fprintf(stderr,
		"usage: %s IP [--rate PPS] [--seconds S] [--count N] [--port-base P] [--ports N]\n"
		"          [--sockets N] [--batch N] [--size BYTES]\n"
		"       %s IP --tcp-syn PORT\n",
		argv0, argv0);
	return 2;
}

static int parse_long(const char *text, long lo, long hi, long *out)
{
	char *end;
	long v;

	errno = 0;
	v = strtol(text, &end, 10);
	if (errno || *end || v < lo || v > hi)
		return -1;
	*out = v;
	return 0;
}

int main(int argc, char **argv)
{
	struct in_addr dst;
	long rate = 0, count = 0, port_base = 10000, ports = 1000, nsockets = 16, batch = 0, size = 16;
	double seconds = 0;
	int fds[MAX_SOCKETS];
	struct sockaddr_in addrs[MAX_BATCH];
	struct mmsghdr msgs[MAX_BATCH];
	struct iovec iov;
	char payload[MAX_SIZE];
	long sent = 0, errors = 0, port_cursor = 0, socket_cursor = 0;
	double t0, deadline, elapsed, cpu0;

	if (argc < 2 || inet_pton(AF_INET, argv[1], &dst) != 1)
		return usage(argv[0]);
	if (!allowed_destination(dst)) {
		fprintf(stderr, "udpspray: %s is not a loopback, private or link-local address\n", argv[1]);
		return 2;
	}
	if (argc == 4 && !strcmp(argv[2], "--tcp-syn")) {
		long port;
		if (parse_long(argv[3], 1, 65535, &port))
			return usage(argv[0]);
		return tcp_syn(dst, port);
	}
	for (int i = 2; i < argc; i += 2) {
		const char *opt = argv[i], *val = i + 1 < argc ? argv[i + 1] : NULL;
		long *target = NULL, lo = 0, hi = 0;

		if (!val)
			return usage(argv[0]);
		if (!strcmp(opt, "--seconds")) {
			char *end;
			seconds = strtod(val, &end);
			if (*end || !(seconds > 0) || seconds > MAX_SECONDS) {
				fprintf(stderr, "udpspray: --seconds must be in (0, %.0f]\n", MAX_SECONDS);
				return 2;
			}
			continue;
		}
		if (!strcmp(opt, "--rate"))
			target = &rate, lo = 0, hi = 100000000;
		else if (!strcmp(opt, "--count"))
			target = &count, lo = 1, hi = 1000000000;
		else if (!strcmp(opt, "--port-base"))
			target = &port_base, lo = 1, hi = 65535;
		else if (!strcmp(opt, "--ports"))
			target = &ports, lo = 1, hi = 65535;
		else if (!strcmp(opt, "--sockets"))
			target = &nsockets, lo = 1, hi = MAX_SOCKETS;
		else if (!strcmp(opt, "--batch"))
			target = &batch, lo = 1, hi = MAX_BATCH;
		else if (!strcmp(opt, "--size"))
			target = &size, lo = 0, hi = MAX_SIZE;
		else
			return usage(argv[0]);
		if (parse_long(val, lo, hi, target)) {
			fprintf(stderr, "udpspray: %s wants an integer in [%ld, %ld]\n", opt, lo, hi);
			return 2;
		}
	}
	if (!count && !seconds) {
		fprintf(stderr, "udpspray: give --seconds or --count (or both): the run must be bounded\n");
		return 2;
	}
	if (!seconds)
		seconds = MAX_SECONDS;
	if (port_base + ports - 1 > 65535) {
		fprintf(stderr, "udpspray: --port-base + --ports goes past 65535\n");
		return 2;
	}
	if (!batch) {
		batch = rate ? rate / 1000 : MAX_BATCH;
		batch = batch < 1 ? 1 : batch > MAX_BATCH ? MAX_BATCH : batch;
	}

	for (long s = 0; s < nsockets; s++) {
		fds[s] = socket(AF_INET, SOCK_DGRAM, 0);
		if (fds[s] < 0) {
			perror("socket");
			return 1;
		}
	}
	memset(payload, 'x', sizeof(payload));
	iov.iov_base = payload;
	iov.iov_len = (size_t)size;
	memset(msgs, 0, sizeof(msgs));
	for (int i = 0; i < MAX_BATCH; i++) {
		addrs[i].sin_family = AF_INET;
		addrs[i].sin_addr = dst;
		msgs[i].msg_hdr.msg_name = &addrs[i];
		msgs[i].msg_hdr.msg_namelen = sizeof(addrs[i]);
		msgs[i].msg_hdr.msg_iov = &iov;
		msgs[i].msg_hdr.msg_iovlen = 1;
	}
	signal(SIGINT, on_signal);
	signal(SIGTERM, on_signal);

	cpu0 = cpu_seconds();
	t0 = now();
	deadline = t0 + seconds;
	while (!stop_requested) {
		long n = batch;
		double t;

		if (count && count - sent < n)
			n = count - sent;
		if (n <= 0)
			break;
		if (rate) {
			/* The batch starting at packet `sent` is due at t0 + sent / rate. */
			double due = t0 + (double)sent / (double)rate;
			if (due >= deadline)
				break;
			if (due > now())
				sleep_until(due);
		}
		t = now();
		if (t >= deadline)
			break;
		for (long i = 0; i < n; i++) {
			addrs[i].sin_port = htons((uint16_t)(port_base + port_cursor));
			port_cursor = (port_cursor + 1) % ports;
		}
		int fd = fds[socket_cursor];
		socket_cursor = (socket_cursor + 1) % nsockets;
		int done = sendmmsg(fd, msgs, (unsigned int)n, 0);
		if (done < 0) {
			errors++;
			if (errno != ENOBUFS && errno != EAGAIN && errno != EINTR && errno != ECONNREFUSED) {
				perror("sendmmsg");
				break;
			}
			continue;
		}
		sent += done;
	}
	elapsed = now() - t0;
	printf("{\"sent\": %ld, \"errors\": %ld, \"seconds\": %.6f, \"pps\": %.1f, \"target_pps\": %ld, "
	       "\"batch\": %ld, \"cpu_seconds\": %.4f}\n",
	       sent, errors, elapsed, elapsed > 0 ? sent / elapsed : 0.0, rate, batch, cpu_seconds() - cpu0);
	fflush(stdout);
	for (long s = 0; s < nsockets; s++)
		close(fds[s]);
	return sent > 0 ? 0 : 1;
}
