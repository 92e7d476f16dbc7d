/*
 * The batched floor for the end-to-end AMP scenario: c_rpcloop's traffic
 * (64-byte requests carrying one descriptor each, 16-byte answers, WINDOW
 * requests in flight) with every request that can go at once sent in one
 * sendmsg carrying up to 253 descriptors, as a batching transport does.  The
 * server takes each batch with one recvmsg (room for 253 descriptors),
 * closes every descriptor and answers all the requests of that read with one
 * write.  Blocking calls throughout, no Python.
 *
 *   c_rpcbatch CALLS WINDOW
 *
 * Prints {"descriptors", "seconds", "sendmsg", "recvmsg", "cpu"}: system
 * calls and CPU seconds of both processes (the client's from its first
 * request to its last answer, the server's whole life).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define REQUEST 64
#define ANSWER 16
#define MAX_FDS 253

union cmsgbuf {
    char buf[CMSG_SPACE(sizeof(int) * MAX_FDS)];
    struct cmsghdr align;
};

struct report {
    long sendmsgs, recvmsgs, received;
    double cpu;
};

static double now(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double cpuSeconds(void)
{
    struct rusage usage;

    getrusage(RUSAGE_SELF, &usage);
    return (double)usage.ru_utime.tv_sec + (double)usage.ru_utime.tv_usec / 1e6
        + (double)usage.ru_stime.tv_sec + (double)usage.ru_stime.tv_usec / 1e6;
}

static void die(const char *what)
{
    perror(what);
    exit(1);
}

/* Sends COUNT requests, each carrying FD, in sendmsg calls of up to 253. */
static long sendRequests(int sock, int fd, long count)
{
    static char requests[REQUEST * MAX_FDS];
    long calls = 0;

    while (count > 0) {
        int n = count < MAX_FDS ? (int)count : MAX_FDS, i;
        union cmsgbuf control;
        struct iovec iov = { requests, (size_t)n * REQUEST };
        struct msghdr msg;
        struct cmsghdr *cmsg;
        ssize_t sent;

        memset(&msg, 0, sizeof msg);
        msg.msg_iov = &iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.buf;
        msg.msg_controllen = CMSG_SPACE(sizeof(int) * n);
        cmsg = CMSG_FIRSTHDR(&msg);
        cmsg->cmsg_level = SOL_SOCKET;
        cmsg->cmsg_type = SCM_RIGHTS;
        cmsg->cmsg_len = CMSG_LEN(sizeof(int) * n);
        for (i = 0; i < n; i++)
            memcpy(CMSG_DATA(cmsg) + i * sizeof(int), &fd, sizeof fd);
        while ((sent = sendmsg(sock, &msg, MSG_NOSIGNAL)) < 0)
            if (errno != EINTR)
                die("sendmsg");
        calls++;
        /* The window's bytes fit the socket's buffer: a short send is a bug. */
        if (sent != (ssize_t)iov.iov_len)
            die("short sendmsg");
        count -= n;
    }
    return calls;
}

/* Answers every request until the client closes. */
static struct report serve(int sock)
{
    static char answers[ANSWER * (65536 / REQUEST + 1)];
    char data[65536];
    struct report report = { 0, 0, 0, 0.0 };
    long pending = 0;

    for (;;) {
        union cmsgbuf control;
        struct iovec iov = { data, sizeof data };
        struct msghdr msg;
        struct cmsghdr *cmsg;
        ssize_t got;
        long count;

        memset(&msg, 0, sizeof msg);
        msg.msg_iov = &iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.buf;
        msg.msg_controllen = sizeof control.buf;
        got = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC);
        if (got < 0) {
            if (errno == EINTR)
                continue;
            die("recvmsg");
        }
        report.recvmsgs++;
        if (msg.msg_flags & MSG_CTRUNC)
            die("descriptors truncated");
        if (got == 0)
            return report;
        for (cmsg = CMSG_FIRSTHDR(&msg); cmsg; cmsg = CMSG_NXTHDR(&msg, cmsg)) {
            size_t i, n;

            if (cmsg->cmsg_level != SOL_SOCKET || cmsg->cmsg_type != SCM_RIGHTS)
                continue;
            n = (cmsg->cmsg_len - CMSG_LEN(0)) / sizeof(int);
            for (i = 0; i < n; i++) {
                int fd;

                memcpy(&fd, CMSG_DATA(cmsg) + i * sizeof(int), sizeof fd);
                close(fd);
            }
            report.received += (long)n;
        }
        pending += got;
        count = pending / REQUEST;
        pending %= REQUEST;
        if (count > 0) {
            while (write(sock, answers, (size_t)count * ANSWER) < 0)
                if (errno != EINTR)
                    die("write");
            report.sendmsgs++;
        }
    }
}

int main(int argc, char **argv)
{
    long calls, window, sent = 0, answered = 0, buffered = 0, sendmsgs = 0, recvs = 0;
    int sv[2], pipefd[2], fd;
    char answers[ANSWER * 1024];
    double started, elapsed, cpuStarted, cpu;
    struct report server;
    pid_t pid;

    if (argc != 3)
        return fprintf(stderr, "usage: %s CALLS WINDOW\n", argv[0]), 2;
    calls = atol(argv[1]);
    window = atol(argv[2]);
    /* The whole window must fit the socket's buffer (see sendRequests). */
    if (calls <= 0 || window <= 0 || window > 1024)
        return fprintf(stderr, "CALLS > 0, 0 < WINDOW <= 1024\n"), 2;
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0 || pipe(pipefd) < 0)
        die("socketpair");
    pid = fork();
    if (pid < 0)
        die("fork");
    if (pid == 0) {
        close(sv[0]);
        server = serve(sv[1]);
        server.cpu = cpuSeconds();
        if (write(pipefd[1], &server, sizeof server) != sizeof server)
            die("write");
        _exit(0);
    }
    close(sv[1]);
    fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        die("open");
    started = now();
    cpuStarted = cpuSeconds();
    sent = window < calls ? window : calls;
    sendmsgs += sendRequests(sv[0], fd, sent);
    while (answered < calls) {
        ssize_t got = read(sv[0], answers, sizeof answers);
        long count;

        if (got < 0) {
            if (errno == EINTR)
                continue;
            die("read");
        }
        recvs++;
        if (got == 0)
            die("server closed");
        buffered += got;
        count = buffered / ANSWER;
        buffered %= ANSWER;
        answered += count;
        if (count > calls - sent)
            count = calls - sent;
        if (count > 0) {
            sendmsgs += sendRequests(sv[0], fd, count);
            sent += count;
        }
    }
    elapsed = now() - started;
    cpu = cpuSeconds() - cpuStarted;
    shutdown(sv[0], SHUT_WR);
    if (read(pipefd[0], &server, sizeof server) != sizeof server)
        die("read");
    waitpid(pid, NULL, 0);
    if (server.received != calls)
        return fprintf(stderr, "server received %ld of %ld descriptors\n", server.received, calls), 1;
    printf("{\"descriptors\": %ld, \"seconds\": %.9f, \"sendmsg\": %ld, \"recvmsg\": %ld, "
           "\"cpu\": %.6f}\n",
           calls, elapsed, sendmsgs + server.sendmsgs, recvs + server.recvmsgs, cpu + server.cpu);
    return 0;
}
