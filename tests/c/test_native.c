/*
 * Tests for the C core (csrc/fdio.c, csrc/ampbox.c), meant to run under ASan
 * and UBSan.  As in libwayland's runner, every test runs in a forked child and
 * fails if it crashes, fails a check, leaks memory (LeakSanitizer runs when
 * the child exits) or leaves a different number of descriptors open than it
 * found.  Arguments, if any, name the tests to run.
 */
#define _GNU_SOURCE
#include "ampbox.h"
#include "check_box.h"
#include "fdio.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

/* ---- the runner ------------------------------------------------------- */

struct test {
    const char *name;
    void (*run)(void);
};

/* What a failing check should also print, such as a random seed. */
static char failure_context[128];

static void check_failed(const char *file, int line, const char *what)
{
    fprintf(stderr, "%s:%d: check failed: %s\n", file, line, what);
    if (failure_context[0])
        fprintf(stderr, "    (%s)\n", failure_context);
    fflush(stderr);
    _exit(1);
}

static void check_eq_failed(const char *file, int line, const char *a, const char *b,
                            long long va, long long vb)
{
    char what[512];

    snprintf(what, sizeof what, "%s == %s: %lld != %lld", a, b, va, vb);
    check_failed(file, line, what);
}

#define CHECK(cond) \
    do { \
        if (!(cond)) \
            check_failed(__FILE__, __LINE__, #cond); \
    } while (0)

#define CHECK_EQ(a, b) \
    do { \
        long long a_ = (long long)(a), b_ = (long long)(b); \
        if (a_ != b_) \
            check_eq_failed(__FILE__, __LINE__, #a, #b, a_, b_); \
    } while (0)

#define CHECK_ERRNO(call, err) \
    do { \
        errno = 0; \
        CHECK_EQ((call), -1); \
        CHECK_EQ(errno, (err)); \
    } while (0)

static int count_fds(void)
{
    DIR *dir = opendir("/proc/self/fd");
    struct dirent *entry;
    int n = 0;

    CHECK(dir != NULL);
    while ((entry = readdir(dir)) != NULL) {
        if (entry->d_name[0] != '.')
            n++;
    }
    closedir(dir);
    return n - 1; /* the directory's own descriptor */
}

static void run_child(const struct test *t)
{
    int before, after;

    alarm(60);
    before = count_fds();
    t->run();
    after = count_fds();
    if (before != after) {
        fprintf(stderr, "%s: %d descriptors open before, %d after\n", t->name, before, after);
        fflush(stderr);
        _exit(3);
    }
    exit(0); /* not _exit: LeakSanitizer checks at exit */
}

static int run_test(const struct test *t)
{
    pid_t pid;
    int status;

    fflush(stdout);
    fflush(stderr);
    pid = fork();
    if (pid < 0) {
        perror("fork");
        exit(2);
    }
    if (pid == 0)
        run_child(t);
    while (waitpid(pid, &status, 0) < 0) {
        if (errno != EINTR) {
            perror("waitpid");
            exit(2);
        }
    }
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0) {
        printf("ok    %s\n", t->name);
        return 1;
    }
    if (WIFSIGNALED(status))
        printf("FAIL  %s (signal %d, %s)\n", t->name, WTERMSIG(status), strsignal(WTERMSIG(status)));
    else
        printf("FAIL  %s (exit status %d)\n", t->name, WEXITSTATUS(status));
    return 0;
}

/* ---- helpers ------------------------------------------------------------ */

static void make_pair(int sv[2])
{
    CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
}

static void close_pair(int sv[2])
{
    if (sv[0] >= 0)
        close(sv[0]);
    if (sv[1] >= 0)
        close(sv[1]);
}

/* n distinct files, each its own inode, without FD_CLOEXEC so that the flag
 * on a received copy shows the receiver asked for it. */
static void make_files(int *fds, int n)
{
    for (int i = 0; i < n; i++) {
        fds[i] = memfd_create("paf-test", 0);
        CHECK(fds[i] >= 0);
    }
}

static int same_file(int a, int b)
{
    struct stat sa, sb;

    CHECK(fstat(a, &sa) == 0);
    CHECK(fstat(b, &sb) == 0);
    return sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
}

static int is_cloexec(int fd)
{
    int flags = fcntl(fd, F_GETFD);

    CHECK(flags >= 0);
    return (flags & FD_CLOEXEC) != 0;
}

static void set_nonblocking(int fd)
{
    int flags = fcntl(fd, F_GETFL);

    CHECK(flags >= 0);
    CHECK(fcntl(fd, F_SETFL, flags | O_NONBLOCK) == 0);
}

/* Nothing more to read, right now. */
static void check_nothing_pending(int fd)
{
    char c;
    int fds[PAF_MAX_FDS_PER_MESSAGE], nfds = -1, flags = -1;

    CHECK_ERRNO(paf_recvmsg(fd, &c, 1, fds, PAF_MAX_FDS_PER_MESSAGE, &nfds, &flags), EAGAIN);
    CHECK_EQ(nfds, 0);
}

/* ---- fdio ----------------------------------------------------------------- */

/* Sends n descriptors with some data, receives them and checks what arrived. */
static void send_and_receive(int n, int passcred)
{
    int sv[2], sent[PAF_MAX_FDS_PER_MESSAGE], got[PAF_MAX_FDS_PER_MESSAGE];
    int nfds = -1, flags = -1, one = 1;
    char data[300], buf[400];

    memset(data, 'd', sizeof data);
    make_pair(sv);
    if (passcred)
        CHECK(setsockopt(sv[1], SOL_SOCKET, SO_PASSCRED, &one, sizeof one) == 0);
    make_files(sent, n);

    CHECK_EQ(paf_send(sv[0], data, sizeof data, sent, n, 0), sizeof data);
    /* Exactly as much room as was sent: the credentials beside the
     * descriptors must not crowd any out. */
    CHECK_EQ(paf_recvmsg(sv[1], buf, sizeof buf, got, n, &nfds, &flags), sizeof data);
    CHECK(memcmp(buf, data, sizeof data) == 0);
    CHECK_EQ(nfds, n);
    CHECK_EQ(flags & MSG_CTRUNC, 0);
    for (int i = 0; i < n; i++) {
        CHECK(got[i] != sent[i]);
        CHECK(same_file(got[i], sent[i]));
        CHECK(is_cloexec(got[i]));
        CHECK(!is_cloexec(sent[i]));
    }
    paf_close_all(got, nfds);
    paf_close_all(sent, n);
    close_pair(sv);
}

static void test_send_recv_no_fds(void) { send_and_receive(0, 0); }
static void test_send_recv_one_fd(void) { send_and_receive(1, 0); }
static void test_send_recv_two_fds(void) { send_and_receive(2, 0); }
static void test_send_recv_max_fds(void) { send_and_receive(PAF_MAX_FDS_PER_MESSAGE, 0); }
static void test_passcred_one_fd(void) { send_and_receive(1, 1); }
static void test_passcred_max_fds(void) { send_and_receive(PAF_MAX_FDS_PER_MESSAGE, 1); }

/* Duplicates are close-on-exec and refer to the same files; a bad
 * descriptor midway leaves none of them open. */
static void test_dup_all(void)
{
    int fds[3], dups[3], open_before;

    make_files(fds, 3);
    open_before = count_fds();
    CHECK_EQ(paf_dup_all(fds, 3, dups), 0);
    CHECK_EQ(count_fds(), open_before + 3);
    for (int i = 0; i < 3; i++) {
        struct stat a, b;

        CHECK(fstat(fds[i], &a) == 0 && fstat(dups[i], &b) == 0);
        CHECK(a.st_ino == b.st_ino && a.st_dev == b.st_dev);
        CHECK(fcntl(dups[i], F_GETFD) & FD_CLOEXEC);
    }
    paf_close_all(dups, 3);
    {
        int bad[3] = { fds[0], -1, fds[2] };

        CHECK_ERRNO(paf_dup_all(bad, 3, dups), EBADF);
    }
    CHECK_EQ(count_fds(), open_before);
    paf_close_all(fds, 3);
}

/* A run of consecutive descriptors goes in one close_range: exactly those,
 * not the neighbours on either side; scattered ones and bad ones too. */
static void test_close_all_runs(void)
{
    int fds[8], open_before;

    make_files(fds, 8);
    open_before = count_fds();
    /* fds are consecutive: close the middle six, then a scattered pair
     * mixed with a bad descriptor. */
    for (int i = 1; i < 7; i++)
        CHECK_EQ(fds[i], fds[0] + i);
    paf_close_all(fds + 1, 6);
    CHECK_EQ(count_fds(), open_before - 6);
    CHECK(fcntl(fds[0], F_GETFD) >= 0);
    CHECK(fcntl(fds[7], F_GETFD) >= 0);
    {
        int rest[3] = { fds[7], -1, fds[0] };

        paf_close_all(rest, 3);
    }
    CHECK_EQ(count_fds(), open_before - 8);
}

static void test_passcred_no_fds(void)
{
    int sv[2], got[PAF_MAX_FDS_PER_MESSAGE], nfds = -1, flags = -1, one = 1;
    char buf[8];

    make_pair(sv);
    CHECK(setsockopt(sv[1], SOL_SOCKET, SO_PASSCRED, &one, sizeof one) == 0);
    CHECK_EQ(paf_send(sv[0], "abc", 3, NULL, 0, 0), 3);
    CHECK_EQ(paf_recvmsg(sv[1], buf, sizeof buf, got, 0, &nfds, &flags), 3);
    CHECK_EQ(nfds, 0);
    CHECK_EQ(flags & MSG_CTRUNC, 0);
    close_pair(sv);
}

static void test_send_too_many_fds(void)
{
    int sv[2], fds[PAF_MAX_FDS_PER_MESSAGE + 1];

    make_pair(sv);
    make_files(fds, PAF_MAX_FDS_PER_MESSAGE + 1);
    CHECK_ERRNO(paf_send(sv[0], "x", 1, fds, PAF_MAX_FDS_PER_MESSAGE + 1, 0), EINVAL);
    CHECK_ERRNO(paf_send(sv[0], "x", 1, fds, -1, 0), EINVAL);
    set_nonblocking(sv[1]);
    check_nothing_pending(sv[1]);
    paf_close_all(fds, PAF_MAX_FDS_PER_MESSAGE + 1);
    close_pair(sv);
}

static void test_send_fds_without_data(void)
{
    int sv[2], fd;
    char byte = 'x';
    struct iovec empty[2] = { { &byte, 0 }, { &byte, 0 } };

    make_pair(sv);
    make_files(&fd, 1);
    CHECK_ERRNO(paf_send(sv[0], &byte, 0, &fd, 1, 0), EINVAL);
    CHECK_ERRNO(paf_send(sv[0], NULL, 0, &fd, 1, 0), EINVAL);
    CHECK_ERRNO(paf_sendmsg(sv[0], empty, 2, &fd, 1, 0), EINVAL);
    CHECK_ERRNO(paf_sendmsg(sv[0], NULL, 0, &fd, 1, 0), EINVAL);
    CHECK_ERRNO(paf_sendmsg(sv[0], empty, -1, NULL, 0, 0), EINVAL);
    set_nonblocking(sv[1]);
    check_nothing_pending(sv[1]);
    close(fd);
    close_pair(sv);
}

static void test_sendmsg_several_buffers(void)
{
    int sv[2], sent[2], got[PAF_MAX_FDS_PER_MESSAGE], nfds = -1, flags = -1;
    char buf[32];
    struct iovec iov[4] = {
        { "ab", 2 }, { "", 0 }, { "cdefg", 5 }, { "h", 1 },
    };

    make_pair(sv);
    make_files(sent, 2);
    CHECK_EQ(paf_sendmsg(sv[0], iov, 4, sent, 2, 0), 8);
    CHECK_EQ(paf_recvmsg(sv[1], buf, sizeof buf, got, 8, &nfds, &flags), 8);
    CHECK(memcmp(buf, "abcdefgh", 8) == 0);
    CHECK_EQ(nfds, 2);
    CHECK(same_file(got[0], sent[0]));
    CHECK(same_file(got[1], sent[1]));
    CHECK(!same_file(got[0], sent[1]));
    paf_close_all(got, nfds);
    paf_close_all(sent, 2);
    close_pair(sv);
}

static void test_send_bad_descriptor(void)
{
    int sv[2], bad = 1000000;

    make_pair(sv);
    CHECK_ERRNO(paf_send(sv[0], "x", 1, &bad, 1, 0), EBADF);
    close_pair(sv);
}

/* What a truncated receive returns: the data, MSG_CTRUNC, and, still open,
 * the first nfds of the ten sent (up to all ten), in order, close-on-exec.
 * The caller closes them, where it chooses: closing a peer's descriptor may
 * block. */
static void check_truncated(const char *buf, const int *sent, const int *got, int nfds,
                            int flags, int open_before)
{
    CHECK(memcmp(buf, "0123456789", 10) == 0);
    CHECK(flags & MSG_CTRUNC);
    CHECK(nfds >= 0 && nfds <= 10);
    for (int i = 0; i < nfds; i++) {
        CHECK(same_file(got[i], sent[i]));
        CHECK(is_cloexec(got[i]));
    }
    CHECK_EQ(count_fds(), open_before + nfds);
    paf_close_all(got, nfds);
    CHECK_EQ(count_fds(), open_before);
}

/* Sends 10 descriptors and receives them with room for max_fds: the
 * receive is reported as truncated, and the expected number that arrived
 * are handed back. */
static void receive_truncated(int max_fds, int passcred, int expected)
{
    int sv[2], sent[10], kept[10], got[PAF_MAX_FDS_PER_MESSAGE];
    int nfds = -1, flags = -1, one = 1, open_before;
    char buf[32];

    make_pair(sv);
    if (passcred)
        CHECK(setsockopt(sv[1], SOL_SOCKET, SO_PASSCRED, &one, sizeof one) == 0);
    make_files(sent, 10);
    /* Our own copies, to compare with (the sent ones go). */
    CHECK_EQ(paf_dup_all(sent, 10, kept), 0);
    CHECK_EQ(paf_send(sv[0], "0123456789", 10, sent, 10, 0), 10);
    paf_close_all(sent, 10);
    open_before = count_fds();
    CHECK_EQ(paf_recvmsg(sv[1], buf, sizeof buf, got, max_fds, &nfds, &flags), 10);
    CHECK_EQ(nfds, expected);
    check_truncated(buf, kept, got, nfds, flags, open_before);
    paf_close_all(kept, 10);
    close_pair(sv);
}

/* Room for fewer than a whole message is exact: the kernel installs that
 * many and drops the rest. */
static void test_recv_ctrunc_max_fds_3(void) { receive_truncated(3, 0, 3); }
static void test_recv_ctrunc_max_fds_0(void) { receive_truncated(0, 0, 0); }
/* With credentials passing on, the credentials come first and take room of
 * their own: still exactly max_fds arrive. */
static void test_recv_ctrunc_passcred(void) { receive_truncated(3, 1, 3); }

/* The receiver at RLIMIT_NOFILE: the kernel installs what it can and sets
 * MSG_CTRUNC; what did arrive is handed back. */
static void test_recv_ctrunc_at_fd_limit(void)
{
    int sv[2], sent[10], kept[10], got[PAF_MAX_FDS_PER_MESSAGE];
    int nfds = -1, flags = -1, open_before, free_slots = 0, fd;
    struct rlimit saved, low;
    char buf[32];

    make_pair(sv);
    make_files(sent, 10);
    CHECK_EQ(paf_dup_all(sent, 10, kept), 0);
    CHECK_EQ(paf_send(sv[0], "0123456789", 10, sent, 10, 0), 10);
    paf_close_all(sent, 10);

    /* A limit that leaves exactly three descriptor numbers free: it only
     * bounds new numbers, those already open above it stay. */
    for (fd = 0; free_slots < 3; fd++) {
        if (fcntl(fd, F_GETFD) < 0 && errno == EBADF)
            free_slots++;
    }
    open_before = count_fds();
    CHECK(getrlimit(RLIMIT_NOFILE, &saved) == 0);
    low = saved;
    low.rlim_cur = (rlim_t)fd;
    CHECK(setrlimit(RLIMIT_NOFILE, &low) == 0);
    CHECK_EQ(paf_recvmsg(sv[1], buf, sizeof buf, got, 10, &nfds, &flags), 10);
    CHECK(setrlimit(RLIMIT_NOFILE, &saved) == 0);
    CHECK_EQ(nfds, 3);
    check_truncated(buf, kept, got, nfds, flags, open_before);
    paf_close_all(kept, 10);
    close_pair(sv);
}

static void test_recv_bad_max_fds(void)
{
    int sv[2], got[PAF_MAX_FDS_PER_MESSAGE], nfds = -1, flags = -1;
    char buf[4];

    make_pair(sv);
    CHECK_ERRNO(paf_recvmsg(sv[1], buf, sizeof buf, got, -1, &nfds, &flags), EINVAL);
    CHECK_EQ(nfds, 0);
    CHECK_ERRNO(paf_recvmsg(sv[1], buf, sizeof buf, got, PAF_MAX_FDS_PER_MESSAGE + 1, &nfds, &flags), EINVAL);
    CHECK_EQ(nfds, 0);
    close_pair(sv);
}

/* Data without descriptors before a message that carries some is merged in;
 * a read stops right after a message carrying descriptors. */
static void test_recv_stops_after_descriptors(void)
{
    int sv[2], sent[2], got[PAF_MAX_FDS_PER_MESSAGE], nfds = -1, flags = -1;
    char buf[32];

    make_pair(sv);
    make_files(sent, 2);
    CHECK_EQ(paf_send(sv[0], "ab", 2, NULL, 0, 0), 2);
    CHECK_EQ(paf_send(sv[0], "c", 1, &sent[0], 1, 0), 1);
    CHECK_EQ(paf_send(sv[0], "d", 1, &sent[1], 1, 0), 1);
    CHECK_EQ(paf_send(sv[0], "ef", 2, NULL, 0, 0), 2);

    CHECK_EQ(paf_recvmsg(sv[1], buf, sizeof buf, got, 4, &nfds, &flags), 3);
    CHECK(memcmp(buf, "abc", 3) == 0);
    CHECK_EQ(nfds, 1);
    CHECK(same_file(got[0], sent[0]));
    close(got[0]);

    CHECK_EQ(paf_recvmsg(sv[1], buf, sizeof buf, got, 4, &nfds, &flags), 1);
    CHECK_EQ(buf[0], 'd');
    CHECK_EQ(nfds, 1);
    CHECK(same_file(got[0], sent[1]));
    close(got[0]);

    CHECK_EQ(paf_recvmsg(sv[1], buf, sizeof buf, got, 4, &nfds, &flags), 2);
    CHECK(memcmp(buf, "ef", 2) == 0);
    CHECK_EQ(nfds, 0);
    paf_close_all(sent, 2);
    close_pair(sv);
}

/* Fills the socket; returns the bytes the peer now has to read. */
static size_t fill_socket(int fd, int flags)
{
    static char chunk[65536];
    size_t total = 0;

    for (;;) {
        ssize_t n = paf_send(fd, chunk, sizeof chunk, NULL, 0, flags);
        if (n < 0) {
            CHECK_EQ(errno, EAGAIN);
            return total;
        }
        total += (size_t)n;
    }
}

static void drain_without_fds(int fd, size_t expected)
{
    static char buf[65536];
    int got[PAF_MAX_FDS_PER_MESSAGE], nfds = -1, flags = -1;
    size_t total = 0;

    while (total < expected) {
        ssize_t n = paf_recvmsg(fd, buf, sizeof buf, got, PAF_MAX_FDS_PER_MESSAGE, &nfds, &flags);
        CHECK(n > 0);
        CHECK_EQ(nfds, 0);
        total += (size_t)n;
    }
    CHECK_EQ(total, expected);
}

static void test_send_full_nonblocking(void)
{
    int sv[2], fd;
    struct iovec iov = { "x", 1 };
    size_t queued;

    make_pair(sv);
    make_files(&fd, 1);
    set_nonblocking(sv[0]);
    queued = fill_socket(sv[0], 0);
    CHECK(queued > 0);
    CHECK_ERRNO(paf_send(sv[0], "x", 1, NULL, 0, 0), EAGAIN);
    CHECK_ERRNO(paf_send(sv[0], "x", 1, &fd, 1, 0), EAGAIN);
    CHECK_ERRNO(paf_sendmsg(sv[0], &iov, 1, &fd, 1, 0), EAGAIN);
    set_nonblocking(sv[1]);
    drain_without_fds(sv[1], queued);
    check_nothing_pending(sv[1]);
    close(fd);
    close_pair(sv);
}

static void test_send_full_dontwait(void)
{
    int sv[2], fd;
    size_t queued;

    make_pair(sv);
    make_files(&fd, 1);
    queued = fill_socket(sv[0], MSG_DONTWAIT);
    CHECK_ERRNO(paf_send(sv[0], "x", 1, &fd, 1, MSG_DONTWAIT), EAGAIN);
    set_nonblocking(sv[1]);
    drain_without_fds(sv[1], queued);
    check_nothing_pending(sv[1]);
    close(fd);
    close_pair(sv);
}

/* Only part of the data fits: the descriptors went with its first byte. */
static void test_partial_send_carries_fds_first(void)
{
    enum { BIG = 8 << 20 };
    int sv[2], sent[3], got[PAF_MAX_FDS_PER_MESSAGE], nfds = -1, flags = -1;
    char *data = malloc(BIG), *buf = malloc(BIG);
    ssize_t accepted, n;
    size_t total = 0;
    int first = 1;

    CHECK(data != NULL && buf != NULL);
    for (size_t i = 0; i < BIG; i++)
        data[i] = (char)(i * 7);
    make_pair(sv);
    make_files(sent, 3);
    accepted = paf_send(sv[0], data, BIG, sent, 3, MSG_DONTWAIT);
    CHECK(accepted > 0);
    CHECK(accepted < BIG);
    while (total < (size_t)accepted) {
        n = paf_recvmsg(sv[1], buf + total, BIG - total, got, PAF_MAX_FDS_PER_MESSAGE, &nfds, &flags);
        CHECK(n > 0);
        if (first) {
            CHECK_EQ(nfds, 3);
            for (int i = 0; i < 3; i++)
                CHECK(same_file(got[i], sent[i]));
            paf_close_all(got, nfds);
            first = 0;
        } else {
            CHECK_EQ(nfds, 0);
        }
        total += (size_t)n;
    }
    CHECK_EQ(total, accepted);
    CHECK(memcmp(buf, data, total) == 0);
    paf_close_all(sent, 3);
    close_pair(sv);
    free(data);
    free(buf);
}

static void test_send_peer_closed_epipe(void)
{
    int sv[2], fd;
    struct iovec iov = { "x", 1 };

    /* A SIGPIPE would kill the child and fail the test. */
    CHECK(signal(SIGPIPE, SIG_DFL) != SIG_ERR);
    make_pair(sv);
    make_files(&fd, 1);
    close(sv[1]);
    sv[1] = -1;
    CHECK_ERRNO(paf_send(sv[0], "x", 1, NULL, 0, 0), EPIPE);
    CHECK_ERRNO(paf_send(sv[0], "x", 1, &fd, 1, 0), EPIPE);
    CHECK_ERRNO(paf_sendmsg(sv[0], &iov, 1, &fd, 1, MSG_DONTWAIT), EPIPE);
    close(fd);
    close_pair(sv);
}

static void test_recv_eof(void)
{
    int sv[2], got[PAF_MAX_FDS_PER_MESSAGE], nfds = -1, flags = -1;
    char buf[8];

    make_pair(sv);
    CHECK_EQ(paf_send(sv[0], "ab", 2, NULL, 0, 0), 2);
    close(sv[0]);
    sv[0] = -1;
    CHECK_EQ(paf_recvmsg(sv[1], buf, sizeof buf, got, 4, &nfds, &flags), 2);
    CHECK_EQ(paf_recvmsg(sv[1], buf, sizeof buf, got, 4, &nfds, &flags), 0);
    CHECK_EQ(nfds, 0);
    CHECK_EQ(flags & MSG_CTRUNC, 0);
    close_pair(sv);
}

static void test_close_all(void)
{
    int fds[5], open_before = count_fds();

    make_files(fds, 5);
    CHECK_EQ(count_fds(), open_before + 5);
    paf_close_all(fds, 5);
    CHECK_EQ(count_fds(), open_before);
    paf_close_all(fds, 0);
}

/* ---- box building ------------------------------------------------------------ */

/* The checks shared with the fuzz targets fail as every check here does. */
void check_box_failed(const char *file, int line, const char *what)
{
    check_failed(file, line, what);
}

/* One field as on the wire. */
static void put_field(struct bytes *b, const char *key, const void *value, size_t vlen)
{
    bytes_put_u16(b, strlen(key));
    bytes_put(b, key, strlen(key));
    bytes_put_u16(b, vlen);
    bytes_put(b, value, vlen);
}

static void put_end(struct bytes *b)
{
    bytes_put_u16(b, 0);
}

/* What was decoded from s is exactly its first n bytes. */
static void check_decoded_prefix(const struct decoded *s, size_t n)
{
    CHECK_EQ(s->consumed, n);
    CHECK_EQ(s->boxes.len, n);
    CHECK(n == 0 || memcmp(s->boxes.p, s->stream, n) == 0);
}

static const char *format_of(const paf_decoder *d)
{
    return paf_decoder_format(d);
}

/* ---- decoder ----------------------------------------------------------------- */

static void test_decode_one_box(void)
{
    struct bytes in = { 0 };
    struct decoded s;
    paf_decoder *d = paf_decoder_new(1 << 20);

    put_field(&in, "a", "1", 1);
    put_field(&in, "bc", "", 0);
    put_end(&in);
    CHECK(d != NULL);
    decoded_init(&s, in.p, 1 << 20);
    CHECK_EQ(check_feed(d, &s, in.len), 1);
    CHECK_EQ(paf_decoder_from_input(d), 1);
    CHECK_EQ(paf_decoder_boxes(d), 1);
    CHECK_EQ(paf_decoder_box_fields(d)[0], 2);
    CHECK_EQ(paf_decoder_box_ends(d)[0], in.len);
    CHECK(strcmp(format_of(d), "2x1s2x1s2x2s2x0s2x") == 0);
    CHECK_EQ(paf_decoder_pending(d), 0);
    check_decoded_prefix(&s, in.len);
    paf_decoder_free(d);
    decoded_free(&s);
    bytes_free(&in);
}

static void test_decode_empty_box(void)
{
    paf_decoder *d = paf_decoder_new(1 << 20);
    struct decoded s;

    decoded_init(&s, (const uint8_t *)"\0\0\0\0", 1 << 20);
    CHECK_EQ(check_feed(d, &s, 4), 2);
    CHECK_EQ(paf_decoder_box_fields(d)[0], 0);
    CHECK_EQ(paf_decoder_box_fields(d)[1], 0);
    CHECK_EQ(paf_decoder_box_ends(d)[0], 2);
    CHECK_EQ(paf_decoder_box_ends(d)[1], 4);
    CHECK(strcmp(format_of(d), "2x2x") == 0);
    CHECK_EQ(paf_decoder_pending(d), 0);
    paf_decoder_free(d);
    decoded_free(&s);
}

/* Two whole boxes and the start of a third in one feed; the rest later. */
static void test_decode_boxes_and_partial(void)
{
    struct bytes in = { 0 };
    struct decoded s;
    paf_decoder *d = paf_decoder_new(1 << 20);
    size_t first, second, cut, held_len;
    const uint8_t *held;

    put_field(&in, "_ask", "1", 1);
    put_field(&in, "_command", "Sum", 3);
    put_end(&in);
    first = in.len;
    put_end(&in);
    second = in.len;
    put_field(&in, "_answer", "1", 1);
    put_field(&in, "total", "42", 2);
    put_end(&in);
    cut = second + 9;

    decoded_init(&s, in.p, 1 << 20);
    CHECK_EQ(check_feed(d, &s, cut), 2);
    CHECK_EQ(paf_decoder_from_input(d), 1);
    CHECK_EQ(paf_decoder_box_ends(d)[0], first);
    CHECK_EQ(paf_decoder_box_ends(d)[1], second);
    CHECK_EQ(paf_decoder_box_fields(d)[0], 2);
    CHECK_EQ(paf_decoder_box_fields(d)[1], 0);
    CHECK(strcmp(format_of(d), "2x4s2x1s2x8s2x3s2x2x") == 0);
    CHECK_EQ(paf_decoder_pending(d), cut - second);

    CHECK_EQ(check_feed(d, &s, in.len - cut), 1);
    CHECK_EQ(paf_decoder_from_input(d), 0);
    CHECK_EQ(paf_decoder_box_fields(d)[0], 2);
    held = paf_decoder_held(d, &held_len);
    CHECK_EQ(held_len, in.len - second);
    CHECK(memcmp(held, in.p + second, in.len - second) == 0);
    CHECK_EQ(paf_decoder_box_ends(d)[0], in.len - second);
    CHECK(strcmp(format_of(d), "2x7s2x1s2x5s2x2s2x") == 0);
    CHECK_EQ(paf_decoder_pending(d), 0);
    check_decoded_prefix(&s, in.len);
    paf_decoder_free(d);
    decoded_free(&s);
    bytes_free(&in);
}

/* Every byte alone: a box is reported with the byte that ends it, and from
 * the held bytes. */
static void test_decode_byte_by_byte(void)
{
    struct bytes in = { 0 };
    struct decoded s;
    paf_decoder *d = paf_decoder_new(1 << 20);
    size_t ends[3], nends = 0, seen = 0;

    put_field(&in, "key", "value", 5);
    put_end(&in);
    ends[nends++] = in.len;
    put_end(&in);
    ends[nends++] = in.len;
    put_field(&in, "k", "", 0);
    put_field(&in, "k2", "v2", 2);
    put_end(&in);
    ends[nends++] = in.len;

    decoded_init(&s, in.p, 1 << 20);
    for (size_t i = 0; i < in.len; i++) {
        size_t held_from = seen ? ends[seen - 1] : 0;

        if (seen < nends && i + 1 == ends[seen]) {
            CHECK_EQ(check_feed(d, &s, 1), 1);
            CHECK_EQ(paf_decoder_from_input(d), 0);
            CHECK_EQ(paf_decoder_box_ends(d)[0], ends[seen] - held_from);
            CHECK_EQ(paf_decoder_pending(d), 0);
            seen++;
        } else {
            CHECK_EQ(check_feed(d, &s, 1), 0);
            CHECK_EQ(*format_of(d), '\0');
            CHECK_EQ(paf_decoder_pending(d), i + 1 - held_from);
            /* The first byte of a box arrives with nothing held. */
            CHECK_EQ(paf_decoder_from_input(d), i == held_from);
        }
    }
    CHECK_EQ(seen, nends);
    check_decoded_prefix(&s, in.len);
    paf_decoder_free(d);
    decoded_free(&s);
    bytes_free(&in);
}

static void test_decode_empty_feeds(void)
{
    paf_decoder *d = paf_decoder_new(1 << 20);
    struct decoded s;

    CHECK_EQ(paf_decoder_feed(d, NULL, 0), 0);
    decoded_init(&s, (const uint8_t *)"\0\0", 1 << 20);
    CHECK_EQ(check_feed(d, &s, 0), 0);
    CHECK_EQ(check_feed(d, &s, 1), 0);
    CHECK_EQ(check_feed(d, &s, 0), 0);
    CHECK_EQ(paf_decoder_pending(d), 1);
    CHECK_EQ(check_feed(d, &s, 1), 1);
    CHECK_EQ(check_feed(d, &s, 0), 0);
    CHECK_EQ(paf_decoder_boxes(d), 0);
    CHECK_EQ(paf_decoder_pending(d), 0);
    paf_decoder_free(d);
    decoded_free(&s);
}

static void test_decode_pending(void)
{
    struct bytes in = { 0 };
    struct decoded s;
    paf_decoder *d = paf_decoder_new(1 << 20);

    put_field(&in, "abc", "defgh", 5);
    put_end(&in);
    decoded_init(&s, in.p, 1 << 20);
    CHECK_EQ(paf_decoder_pending(d), 0);
    CHECK_EQ(check_feed(d, &s, 3), 0);
    CHECK_EQ(paf_decoder_pending(d), 3);
    CHECK_EQ(check_feed(d, &s, 6), 0);
    CHECK_EQ(paf_decoder_pending(d), 9);
    CHECK_EQ(check_feed(d, &s, in.len - 9), 1);
    CHECK_EQ(paf_decoder_pending(d), 0);
    paf_decoder_free(d);
    decoded_free(&s);
    bytes_free(&in);
}

static void test_decode_big_value(void)
{
    struct bytes in = { 0 };
    struct decoded s;
    uint8_t *value = malloc(PAF_AMP_MAX_VALUE_LENGTH);
    paf_decoder *d;
    char format[64];

    CHECK(value != NULL);
    for (size_t i = 0; i < PAF_AMP_MAX_VALUE_LENGTH; i++)
        value[i] = (uint8_t)(i * 31 + 7);
    put_field(&in, "k", value, PAF_AMP_MAX_VALUE_LENGTH);
    put_end(&in);
    snprintf(format, sizeof format, "2x1s2x%ds2x", PAF_AMP_MAX_VALUE_LENGTH);

    /* In one piece. */
    d = paf_decoder_new(1 << 20);
    decoded_init(&s, in.p, 1 << 20);
    CHECK_EQ(check_feed(d, &s, in.len), 1);
    CHECK(strcmp(format_of(d), format) == 0);
    check_decoded_prefix(&s, in.len);
    paf_decoder_free(d);
    decoded_free(&s);

    /* In pieces of 1000 bytes. */
    d = paf_decoder_new(1 << 20);
    decoded_init(&s, in.p, 1 << 20);
    for (size_t at = 0; at < in.len; at += 1000) {
        size_t n = in.len - at < 1000 ? in.len - at : 1000;

        CHECK_EQ(check_feed(d, &s, n), at + n == in.len);
    }
    CHECK_EQ(paf_decoder_from_input(d), 0);
    CHECK(strcmp(format_of(d), format) == 0);
    check_decoded_prefix(&s, in.len);
    paf_decoder_free(d);
    decoded_free(&s);
    free(value);
    bytes_free(&in);
}

static void test_decode_key_too_long(void)
{
    struct bytes in = { 0 };
    struct decoded s;
    paf_decoder *d = paf_decoder_new(1 << 20);
    size_t first;
    char key255[256];

    memset(key255, 'k', 255);
    key255[255] = 0;
    put_field(&in, key255, "v", 1); /* 255 is still fine */
    put_end(&in);
    first = in.len;
    bytes_put_u16(&in, 256);
    bytes_put(&in, key255, 255);
    bytes_put(&in, "k", 1);
    put_end(&in);

    decoded_init(&s, in.p, 1 << 20);
    CHECK_ERRNO(check_feed(d, &s, in.len - 2), ENAMETOOLONG);
    CHECK_EQ(paf_decoder_boxes(d), 1);
    CHECK_EQ(paf_decoder_box_ends(d)[0], first);
    CHECK_EQ(paf_decoder_error_offset(d), first);

    /* Failed for good. */
    CHECK_ERRNO(check_feed(d, &s, 2), ENAMETOOLONG);
    CHECK_EQ(paf_decoder_boxes(d), 0);
    paf_decoder_free(d);
    decoded_free(&s);
    bytes_free(&in);
}

/* The bad prefix after a good field, the box's first bytes held from an
 * earlier feed: the offset is in the held bytes. */
static void test_decode_key_too_long_held(void)
{
    struct bytes in = { 0 };
    struct decoded s;
    paf_decoder *d = paf_decoder_new(1 << 20);
    size_t bad;

    put_end(&in);
    put_field(&in, "a", "b", 1);
    bad = in.len;
    bytes_put_u16(&in, 0x1234);

    decoded_init(&s, in.p, 1 << 20);
    CHECK_EQ(check_feed(d, &s, 5), 1);
    CHECK_ERRNO(check_feed(d, &s, in.len - 5), ENAMETOOLONG);
    CHECK_EQ(paf_decoder_from_input(d), 0);
    CHECK_EQ(paf_decoder_boxes(d), 0);
    CHECK_EQ(paf_decoder_error_offset(d), bad - 2);
    paf_decoder_free(d);
    decoded_free(&s);
    bytes_free(&in);
}

static void test_decode_box_too_large_complete(void)
{
    struct bytes in = { 0 };
    struct decoded s;
    paf_decoder *d;
    size_t first;

    put_field(&in, "key", "0123456789", 10); /* 2+3+2+10+2 = 19 bytes */
    put_end(&in);
    first = in.len;
    put_field(&in, "key", "01234567890", 11); /* 20 bytes */
    put_end(&in);
    CHECK_EQ(first, 19);

    /* Exactly at the limit is fine. */
    d = paf_decoder_new(19);
    decoded_init(&s, in.p, 19);
    CHECK_EQ(check_feed(d, &s, first), 1);
    paf_decoder_free(d);
    decoded_free(&s);

    d = paf_decoder_new(19);
    decoded_init(&s, in.p, 19);
    CHECK_ERRNO(check_feed(d, &s, in.len), EMSGSIZE);
    CHECK_EQ(paf_decoder_boxes(d), 1);
    CHECK_EQ(paf_decoder_box_ends(d)[0], first);
    CHECK_EQ(paf_decoder_error_offset(d), first);
    CHECK_ERRNO(paf_decoder_feed(d, in.p, first), EMSGSIZE);
    CHECK_EQ(paf_decoder_boxes(d), 0);
    paf_decoder_free(d);
    decoded_free(&s);
    bytes_free(&in);
}

/* A box whose announced lengths already pass the limit is refused at once,
 * before its bytes are held. */
static void test_decode_box_too_large_announced(void)
{
    const uint8_t stream[] = { 0, 0, 0, 1, 'k', 0xff, 0xff, 0, 0 };
    struct decoded s;
    paf_decoder *d = paf_decoder_new(1000);

    decoded_init(&s, stream, 1000);
    CHECK_EQ(check_feed(d, &s, 2), 1);
    CHECK_ERRNO(check_feed(d, &s, 5), EMSGSIZE);
    CHECK_EQ(paf_decoder_error_offset(d), 0);
    CHECK_EQ(paf_decoder_boxes(d), 0);
    CHECK_EQ(paf_decoder_pending(d), 0);
    CHECK_ERRNO(check_feed(d, &s, 2), EMSGSIZE);
    paf_decoder_free(d);
    decoded_free(&s);

    /* The same, the header arriving a byte at a time after a whole box. */
    d = paf_decoder_new(1000);
    decoded_init(&s, stream, 1000);
    CHECK_EQ(check_feed(d, &s, 3), 1);
    for (size_t i = 3; i < 6; i++)
        CHECK_EQ(check_feed(d, &s, 1), 0);
    CHECK_ERRNO(check_feed(d, &s, 1), EMSGSIZE);
    CHECK_EQ(paf_decoder_error_offset(d), 0);
    paf_decoder_free(d);
    decoded_free(&s);
}

/* A bad key prefix the box could only reach past the limit: the box's size
 * is what is refused, whether the stream arrives whole or a byte at a time
 * (the byte at a time decoder refuses the box before it reads the prefix). */
static void test_decode_key_too_long_past_limit(void)
{
    struct bytes in = { 0 };
    struct decoded s;
    paf_decoder *d;
    size_t i;

    put_field(&in, "ab", "", 0);
    bytes_put_u16(&in, 0x8f36);
    bytes_put(&in, "junk", 4);

    d = paf_decoder_new(4);
    decoded_init(&s, in.p, 4);
    CHECK_ERRNO(check_feed(d, &s, in.len), EMSGSIZE);
    CHECK_EQ(paf_decoder_error_offset(d), 0);
    paf_decoder_free(d);
    decoded_free(&s);

    d = paf_decoder_new(4);
    decoded_init(&s, in.p, 4);
    for (i = 0; i < in.len && check_feed(d, &s, 1) == 0; i++)
        ;
    CHECK(i < in.len);
    CHECK_EQ(s.error, EMSGSIZE);
    paf_decoder_free(d);
    decoded_free(&s);

    /* Within the limit, the prefix itself is the fault. */
    d = paf_decoder_new(1000);
    decoded_init(&s, in.p, 1000);
    CHECK_ERRNO(check_feed(d, &s, in.len), ENAMETOOLONG);
    CHECK_EQ(paf_decoder_error_offset(d), 6);
    paf_decoder_free(d);
    decoded_free(&s);
    bytes_free(&in);
}

static void test_decode_reset(void)
{
    const uint8_t *partial = (const uint8_t *)"\0\1a\0";
    const uint8_t *bad = (const uint8_t *)"\xff\xff";
    const uint8_t *box = (const uint8_t *)"\0\1a\0\1b\0\0";
    paf_decoder *d = paf_decoder_new(1 << 20);
    struct decoded s;

    /* A partial box is forgotten. */
    decoded_init(&s, partial, 1 << 20);
    CHECK_EQ(check_feed(d, &s, 4), 0);
    CHECK_EQ(paf_decoder_pending(d), 4);
    paf_decoder_reset(d);
    CHECK_EQ(paf_decoder_pending(d), 0);
    CHECK_EQ(paf_decoder_boxes(d), 0);
    CHECK_EQ(*format_of(d), '\0');
    decoded_free(&s);
    decoded_init(&s, box + 6, 1 << 20);
    CHECK_EQ(check_feed(d, &s, 2), 1);
    CHECK_EQ(paf_decoder_from_input(d), 1);
    decoded_free(&s);

    /* So is a failure. */
    decoded_init(&s, bad, 1 << 20);
    CHECK_ERRNO(check_feed(d, &s, 2), ENAMETOOLONG);
    paf_decoder_reset(d);
    decoded_free(&s);
    decoded_init(&s, box, 1 << 20);
    CHECK_EQ(check_feed(d, &s, 8), 1);
    CHECK_EQ(paf_decoder_box_fields(d)[0], 1);
    paf_decoder_free(d);
    decoded_free(&s);
}

/* ---- encoder ----------------------------------------------------------------- */

static void test_encode_sample(void)
{
    const char *data = "_askcmd_commandSumab";
    const int32_t lens[] = { 4, 3, 8, 3, 1, 1, 0, 0 };
    const char expected[] =
        "\0\4_ask\0\3cmd\0\10_command\0\3Sum\0\1a\0\1b\0\0"
        "\0\0";
    uint8_t out[64];
    size_t bad = 99, need = strlen(data) + 2 * 8;
    struct bytes checked;
    int error;

    CHECK_EQ(need, sizeof expected - 1);
    CHECK_EQ(paf_encode((const uint8_t *)data, strlen(data), lens, 8, out, need, &bad), need);
    CHECK(memcmp(out, expected, need) == 0);
    checked = check_encode((const uint8_t *)data, strlen(data), lens, 8, &error);
    CHECK_EQ(error, 0);
    CHECK_EQ(checked.len, need);
    bytes_free(&checked);
    CHECK_EQ(paf_encode(NULL, 0, NULL, 0, out, 0, &bad), 0);
}

static void test_encode_limits(void)
{
    static uint8_t data[PAF_AMP_MAX_VALUE_LENGTH + 300];
    static uint8_t out[sizeof data + 64];
    size_t bad = 99;
    int32_t lens[3];

    memset(data, 'x', sizeof data);
    lens[0] = 255;
    lens[1] = PAF_AMP_MAX_VALUE_LENGTH;
    lens[2] = 0;
    CHECK_EQ(paf_encode(data, 255 + PAF_AMP_MAX_VALUE_LENGTH, lens, 3, out, sizeof out, &bad),
             255 + PAF_AMP_MAX_VALUE_LENGTH + 6);
    CHECK_EQ(out[0], 0);
    CHECK_EQ(out[1], 255);
    CHECK_EQ(out[257], 0xff);
    CHECK_EQ(out[258], 0xff);

    lens[0] = 256;
    lens[1] = 0;
    CHECK_ERRNO(paf_encode(data, 256, lens, 3, out, sizeof out, &bad), ENAMETOOLONG);
    CHECK_EQ(bad, 0);

    lens[0] = 1;
    lens[1] = PAF_AMP_MAX_VALUE_LENGTH + 1;
    CHECK_ERRNO(paf_encode(data, 1 + PAF_AMP_MAX_VALUE_LENGTH + 1, lens, 3, out, sizeof out, &bad),
                EMSGSIZE);
    CHECK_EQ(bad, 1);
}

static void test_encode_bad_layouts(void)
{
    const uint8_t *data = (const uint8_t *)"abcdef";
    uint8_t out[64];
    size_t bad;

    /* A box left open: after a value, and after a key. */
    {
        const int32_t lens[] = { 1, 1 };
        CHECK_ERRNO(paf_encode(data, 2, lens, 2, out, sizeof out, &bad), EINVAL);
        CHECK_EQ(bad, 2);
    }
    {
        const int32_t lens[] = { 1, 1, 0, 1 };
        CHECK_ERRNO(paf_encode(data, 3, lens, 4, out, sizeof out, &bad), EINVAL);
        CHECK_EQ(bad, 4);
    }
    /* Lengths past the data. */
    {
        const int32_t lens[] = { 3, 5, 0 };
        CHECK_ERRNO(paf_encode(data, 6, lens, 3, out, sizeof out, &bad), EINVAL);
        CHECK_EQ(bad, 1);
    }
    /* Data left over. */
    {
        const int32_t lens[] = { 1, 1, 0 };
        CHECK_ERRNO(paf_encode(data, 5, lens, 3, out, sizeof out, &bad), EINVAL);
        CHECK_EQ(bad, 3);
    }
    /* A negative length. */
    {
        const int32_t lens[] = { 1, -1, 0 };
        CHECK_ERRNO(paf_encode(data, 1, lens, 3, out, sizeof out, &bad), EINVAL);
        CHECK_EQ(bad, 1);
    }
}

static void test_encode_no_room(void)
{
    const uint8_t *data = (const uint8_t *)"keyvalue";
    const int32_t lens[] = { 3, 5, 0 };
    uint8_t out[14];
    size_t bad = 99;

    CHECK_EQ(paf_encode(data, 8, lens, 3, out, 14, &bad), 14);
    CHECK_ERRNO(paf_encode(data, 8, lens, 3, out, 13, &bad), ENOBUFS);
    CHECK_EQ(bad, 2);
    CHECK_ERRNO(paf_encode(data, 8, lens, 3, out, 5, &bad), ENOBUFS);
    CHECK_EQ(bad, 1);
    CHECK_ERRNO(paf_encode(data, 8, lens, 3, out, 4, &bad), ENOBUFS);
    CHECK_EQ(bad, 0);
    CHECK_ERRNO(paf_encode(data, 8, lens, 3, NULL, 0, &bad), ENOBUFS);
    CHECK_EQ(bad, 0);
}

/* ---- random round trips ------------------------------------------------------ */

static uint64_t rng_state;

static uint64_t rng_next(void)
{
    /* splitmix64 */
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ULL);

    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static size_t rng_below(size_t n)
{
    return (size_t)(rng_next() % n);
}

/* A length skewed small, as real boxes are, with the extremes now and then. */
static size_t random_length(size_t lo, size_t hi)
{
    switch (rng_below(8)) {
    case 0:
        return lo;
    case 1:
        return hi;
    case 2:
        return lo + rng_below(hi - lo + 1);
    default:
        return lo + rng_below((hi - lo < 20 ? hi - lo : 20) + 1);
    }
}

/* Decodes wire in random chunks of up to max_chunk bytes: every feed
 * checked, and all of it decoded back. */
static void decode_in_random_chunks(const struct bytes *wire, size_t max_chunk)
{
    paf_decoder *d = paf_decoder_new(1 << 20);
    struct decoded s;

    CHECK(d != NULL);
    decoded_init(&s, wire->p, 1 << 20);
    while (s.fed < wire->len) {
        size_t n = rng_below(max_chunk + 1);

        if (n > wire->len - s.fed)
            n = wire->len - s.fed;
        CHECK(check_feed(d, &s, n) >= 0);
    }
    CHECK_EQ(paf_decoder_pending(d), 0);
    check_decoded_prefix(&s, wire->len);
    paf_decoder_free(d);
    decoded_free(&s);
}

/* Random boxes: paf_encode must give what a plain encoder gives, and
 * decoding that in random chunks must give the same boxes back. */
static void round_trip(uint64_t seed)
{
    struct bytes data = { 0 }, lens = { 0 }, wire;
    size_t nlens, nboxes;
    int error;

    snprintf(failure_context, sizeof failure_context, "seed %llu", (unsigned long long)seed);
    rng_state = seed;
    nboxes = rng_below(30);
    for (size_t b = 0; b < nboxes; b++) {
        size_t nfields = rng_below(8);

        for (size_t f = 0; f < nfields; f++) {
            int32_t len[2];

            len[0] = (int32_t)random_length(1, PAF_AMP_MAX_KEY_LENGTH);
            len[1] = (int32_t)(rng_below(4) ? random_length(0, 300)
                                            : random_length(0, PAF_AMP_MAX_VALUE_LENGTH));
            bytes_put(&lens, len, sizeof len);
            for (size_t i = 0; i < (size_t)len[0] + (size_t)len[1]; i++) {
                uint8_t byte = (uint8_t)rng_next();

                bytes_put(&data, &byte, 1);
            }
        }
        {
            int32_t end = 0;
            bytes_put(&lens, &end, sizeof end);
        }
    }
    nlens = lens.len / sizeof(int32_t);

    wire = check_encode(data.p, data.len, (const int32_t *)(void *)lens.p, nlens, &error);
    CHECK_EQ(error, 0);
    CHECK_EQ(wire.len, data.len + 2 * nlens);

    /* Small chunks, large ones, then (when quick enough) a byte at a time. */
    decode_in_random_chunks(&wire, 16);
    decode_in_random_chunks(&wire, 100000);
    if (wire.len < 100000)
        decode_in_random_chunks(&wire, 1);

    bytes_free(&data);
    bytes_free(&wire);
    bytes_free(&lens);
    failure_context[0] = 0;
}

static void test_random_round_trips(void)
{
    for (uint64_t seed = 1; seed <= 200; seed++)
        round_trip(seed);
}

/* ---- main ----------------------------------------------------------------------- */

#define TEST(fn) { &#fn[5], fn } /* the name without "test_" */

static const struct test tests[] = {
    TEST(test_send_recv_no_fds),
    TEST(test_send_recv_one_fd),
    TEST(test_send_recv_two_fds),
    TEST(test_send_recv_max_fds),
    TEST(test_passcred_no_fds),
    TEST(test_dup_all),
    TEST(test_close_all_runs),
    TEST(test_passcred_one_fd),
    TEST(test_passcred_max_fds),
    TEST(test_send_too_many_fds),
    TEST(test_send_fds_without_data),
    TEST(test_sendmsg_several_buffers),
    TEST(test_send_bad_descriptor),
    TEST(test_recv_ctrunc_max_fds_3),
    TEST(test_recv_ctrunc_max_fds_0),
    TEST(test_recv_ctrunc_passcred),
    TEST(test_recv_ctrunc_at_fd_limit),
    TEST(test_recv_bad_max_fds),
    TEST(test_recv_stops_after_descriptors),
    TEST(test_send_full_nonblocking),
    TEST(test_send_full_dontwait),
    TEST(test_partial_send_carries_fds_first),
    TEST(test_send_peer_closed_epipe),
    TEST(test_recv_eof),
    TEST(test_close_all),
    TEST(test_decode_one_box),
    TEST(test_decode_empty_box),
    TEST(test_decode_boxes_and_partial),
    TEST(test_decode_byte_by_byte),
    TEST(test_decode_empty_feeds),
    TEST(test_decode_pending),
    TEST(test_decode_big_value),
    TEST(test_decode_key_too_long),
    TEST(test_decode_key_too_long_held),
    TEST(test_decode_box_too_large_complete),
    TEST(test_decode_box_too_large_announced),
    TEST(test_decode_key_too_long_past_limit),
    TEST(test_decode_reset),
    TEST(test_encode_sample),
    TEST(test_encode_limits),
    TEST(test_encode_bad_layouts),
    TEST(test_encode_no_room),
    TEST(test_random_round_trips),
};

int main(int argc, char **argv)
{
    size_t ntests = sizeof tests / sizeof tests[0];
    int passed = 0, failed = 0;
    struct rlimit lim;

    /* Room for 253 descriptors sent and 253 received at once. */
    if (getrlimit(RLIMIT_NOFILE, &lim) == 0 && lim.rlim_cur < 1024 && lim.rlim_max > lim.rlim_cur) {
        lim.rlim_cur = lim.rlim_max < 1024 ? lim.rlim_max : 1024;
        setrlimit(RLIMIT_NOFILE, &lim);
    }

    for (size_t i = 0; i < ntests; i++) {
        if (argc > 1) {
            int wanted = 0;
            for (int a = 1; a < argc; a++)
                wanted |= strcmp(argv[a], tests[i].name) == 0;
            if (!wanted)
                continue;
        }
        if (run_test(&tests[i]))
            passed++;
        else
            failed++;
    }
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
