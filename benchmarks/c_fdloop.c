/*
 * The physical ceiling for descriptor passing: a plain C sendmsg/recvmsg
 * loop between two processes over an AF_UNIX socketpair.
 *
 *   c_fdloop TOTAL BATCH
 *
 * The parent sends TOTAL descriptors, BATCH per sendmsg with one byte of
 * data; the child receives them (MSG_CMSG_CLOEXEC) and closes them (a run
 * of consecutive numbers in one close_range, as pyamp_fds does, so that
 * this stays the ceiling), then answers one byte.  Prints {"descriptors": N, "seconds": S, "sendmsg": n,
 * "recvmsg": n} for the time from the first send to that answer.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_FDS 253

union cmsgbuf {
    char buf[CMSG_SPACE(sizeof(int) * MAX_FDS)];
    struct cmsghdr align;
};

static double now(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void die(const char *what)
{
    perror(what);
    exit(1);
}

static void close_fds(const int *fds, size_t n)
{
    size_t i = 0;

    while (i < n) {
        size_t j = i + 1;

        while (j < n && fds[j] == fds[j - 1] + 1)
            j++;
        if (j - i < 2 || syscall(SYS_close_range, (unsigned)fds[i], (unsigned)fds[j - 1], 0u) < 0)
            for (size_t k = i; k < j; k++)
                close(fds[k]);
        i = j;
    }
}

static long receive(int sock, long total)
{
    long received = 0, calls = 0;
    char data[4096];

    while (received < total) {
        union cmsgbuf control;
        struct iovec iov = { data, sizeof data };
        struct msghdr msg;
        struct cmsghdr *cmsg;
        ssize_t got;

        memset(&msg, 0, sizeof msg);
        msg.msg_iov = &iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.buf;
        msg.msg_controllen = sizeof control.buf;
        got = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC);
        calls++;
        if (got < 0) {
            if (errno == EINTR)
                continue;
            die("recvmsg");
        }
        if (got == 0)
            break;
        for (cmsg = CMSG_FIRSTHDR(&msg); cmsg; cmsg = CMSG_NXTHDR(&msg, cmsg)) {
            if (cmsg->cmsg_level != SOL_SOCKET || cmsg->cmsg_type != SCM_RIGHTS)
                continue;
            size_t n = (cmsg->cmsg_len - CMSG_LEN(0)) / sizeof(int);
            int fds[MAX_FDS];

            memcpy(fds, CMSG_DATA(cmsg), n * sizeof(int));
            close_fds(fds, n);
            received += (long)n;
        }
    }
    return calls;
}

int main(int argc, char **argv)
{
    long total, batch, sent = 0, sends = 0, recvs = 0;
    int sv[2], fds[MAX_FDS], ack[2];
    char byte = 'x';
    double started, elapsed;
    pid_t pid;

    if (argc != 3)
        return fprintf(stderr, "usage: %s TOTAL BATCH\n", argv[0]), 2;
    total = atol(argv[1]);
    batch = atol(argv[2]);
    if (total <= 0 || batch <= 0 || batch > MAX_FDS)
        return fprintf(stderr, "TOTAL > 0, 1 <= BATCH <= %d\n", MAX_FDS), 2;
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0 || pipe(ack) < 0)
        die("socketpair");
    pid = fork();
    if (pid < 0)
        die("fork");
    if (pid == 0) {
        close(sv[0]);
        recvs = receive(sv[1], total);
        if (write(ack[1], &recvs, sizeof recvs) != sizeof recvs)
            die("write");
        _exit(0);
    }
    close(sv[1]);
    for (long i = 0; i < batch; i++) {
        fds[i] = open("/dev/null", O_RDONLY | O_CLOEXEC);
        if (fds[i] < 0)
            die("open");
    }
    started = now();
    while (sent < total) {
        union cmsgbuf control;
        long n = total - sent < batch ? total - sent : batch;
        struct iovec iov = { &byte, 1 };
        struct msghdr msg;
        struct cmsghdr *cmsg;

        memset(&msg, 0, sizeof msg);
        memset(control.buf, 0, sizeof control.buf);
        msg.msg_iov = &iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.buf;
        msg.msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)n);
        cmsg = CMSG_FIRSTHDR(&msg);
        cmsg->cmsg_level = SOL_SOCKET;
        cmsg->cmsg_type = SCM_RIGHTS;
        cmsg->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)n);
        memcpy(CMSG_DATA(cmsg), fds, sizeof(int) * (size_t)n);
        if (sendmsg(sv[0], &msg, MSG_NOSIGNAL) < 0) {
            if (errno == EINTR)
                continue;
            die("sendmsg");
        }
        sends++;
        sent += n;
    }
    if (read(ack[0], &recvs, sizeof recvs) != sizeof recvs)
        die("read");
    elapsed = now() - started;
    waitpid(pid, NULL, 0);
    printf("{\"descriptors\": %ld, \"seconds\": %.9f, \"sendmsg\": %ld, \"recvmsg\": %ld}\n",
           total, elapsed, sends, recvs);
    return 0;
}
