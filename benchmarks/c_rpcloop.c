/*
 * The floor for the end-to-end AMP scenario: the same traffic shape with no
 * Python at all.  Two processes over an AF_UNIX socketpair; the client keeps
 * WINDOW requests in flight, each one sendmsg of a 64-byte request carrying
 * one descriptor; the server takes each with its own recvmsg (the kernel
 * stops a read at every message that carries descriptors), closes the
 * descriptor and writes a 16-byte answer.  Blocking calls throughout: the
 * fewest system calls and wake-ups such a conversation can have.
 *
 *   c_rpcloop CALLS WINDOW
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

union cmsgbuf {
    char buf[CMSG_SPACE(sizeof(int))];
    struct cmsghdr align;
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

static void sendRequest(int sock, int fd)
{
    static char request[REQUEST];
    union cmsgbuf control;
    struct iovec iov = { request, sizeof request };
    struct msghdr msg;
    struct cmsghdr *cmsg;

    memset(&msg, 0, sizeof msg);
    memset(control.buf, 0, sizeof control.buf);
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.buf;
    msg.msg_controllen = sizeof control.buf;
    cmsg = CMSG_FIRSTHDR(&msg);
    cmsg->cmsg_level = SOL_SOCKET;
    cmsg->cmsg_type = SCM_RIGHTS;
    cmsg->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(cmsg), &fd, sizeof fd);
    while (sendmsg(sock, &msg, MSG_NOSIGNAL) < 0)
        if (errno != EINTR)
            die("sendmsg");
}

struct report {
    long writes, recvmsgs;
    double cpu;
};

/* Answers every request until the client closes. */
static struct report serve(int sock)
{
    static char answer[ANSWER];
    char data[4096];
    struct report report = { 0, 0, 0.0 };
    long pending = 0;

    for (;;) {
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
        if (got < 0) {
            if (errno == EINTR)
                continue;
            die("recvmsg");
        }
        report.recvmsgs++;
        if (got == 0)
            return report;
        for (cmsg = CMSG_FIRSTHDR(&msg); cmsg; cmsg = CMSG_NXTHDR(&msg, cmsg)) {
            int fd;

            if (cmsg->cmsg_level != SOL_SOCKET || cmsg->cmsg_type != SCM_RIGHTS)
                continue;
            memcpy(&fd, CMSG_DATA(cmsg), sizeof fd);
            close(fd);
        }
        pending += got;
        for (; pending >= REQUEST; pending -= REQUEST, report.writes++)
            while (write(sock, answer, sizeof answer) < 0)
                if (errno != EINTR)
                    die("write");
    }
}

int main(int argc, char **argv)
{
    long calls, window, sent = 0, answered = 0, buffered = 0, reads = 0;
    int sv[2], report[2], fd;
    char answers[ANSWER * 256];
    double started, elapsed, cpuStarted, cpu;
    struct report server;
    pid_t pid;

    if (argc != 3)
        return fprintf(stderr, "usage: %s CALLS WINDOW\n", argv[0]), 2;
    calls = atol(argv[1]);
    window = atol(argv[2]);
    if (calls <= 0 || window <= 0)
        return fprintf(stderr, "CALLS > 0, WINDOW > 0\n"), 2;
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0 || pipe(report) < 0)
        die("socketpair");
    pid = fork();
    if (pid < 0)
        die("fork");
    if (pid == 0) {
        close(sv[0]);
        server = serve(sv[1]);
        server.cpu = cpuSeconds();
        if (write(report[1], &server, sizeof server) != sizeof server)
            die("write");
        _exit(0);
    }
    close(sv[1]);
    fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        die("open");
    started = now();
    cpuStarted = cpuSeconds();
    for (; sent < window && sent < calls; sent++)
        sendRequest(sv[0], fd);
    while (answered < calls) {
        ssize_t got = read(sv[0], answers, sizeof answers);

        if (got < 0) {
            if (errno == EINTR)
                continue;
            die("read");
        }
        reads++;
        if (got == 0)
            die("server closed");
        buffered += got;
        for (; buffered >= ANSWER; buffered -= ANSWER) {
            answered++;
            if (sent < calls) {
                sendRequest(sv[0], fd);
                sent++;
            }
        }
    }
    elapsed = now() - started;
    cpu = cpuSeconds() - cpuStarted;
    shutdown(sv[0], SHUT_WR);
    if (read(report[0], &server, sizeof server) != sizeof server)
        die("read");
    waitpid(pid, NULL, 0);
    /* One sendmsg per request on the client's side. */
    printf("{\"descriptors\": %ld, \"seconds\": %.9f, \"sendmsg\": %ld, \"recvmsg\": %ld, "
           "\"cpu\": %.6f}\n",
           calls, elapsed, calls + server.writes, reads + server.recvmsgs, cpu + server.cpu);
    return 0;
}
