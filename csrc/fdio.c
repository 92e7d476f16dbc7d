#define _GNU_SOURCE
#include "fdio.h"

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

/* Room for a credentials message (SO_PASSCRED) beside the descriptors, so
 * that a socket with credentials passing on does not truncate them. */
#define PAF_CRED_SPACE CMSG_SPACE(sizeof(struct ucred))

/* SCM_PIDFD (Linux 6.5) carries a descriptor too; older headers lack it. */
#ifdef SCM_PIDFD
#define PAF_SCM_PIDFD SCM_PIDFD
#else
#define PAF_SCM_PIDFD 0x04
#endif
#ifdef SO_PASSPIDFD
#define PAF_SO_PASSPIDFD SO_PASSPIDFD
#else
#define PAF_SO_PASSPIDFD 76
#endif
#define PAF_PIDFD_SPACE CMSG_SPACE(sizeof(int))

/* Control buffer for the largest message we send or accept, aligned for cmsghdr. */
union paf_cmsgbuf {
    char buf[CMSG_SPACE(sizeof(int) * PAF_MAX_FDS_PER_MESSAGE) + PAF_CRED_SPACE + PAF_PIDFD_SPACE];
    struct cmsghdr align;
};

/* The room the control messages a socket asked for (credentials, a pidfd)
 * take ahead of the descriptors: the kernel puts them first. */
static size_t asked_for_space(int sockfd)
{
    size_t space = 0;
    socklen_t len;
    int on;

    on = 0;
    len = sizeof on;
    if (getsockopt(sockfd, SOL_SOCKET, SO_PASSCRED, &on, &len) == 0 && on)
        space += PAF_CRED_SPACE;
    on = 0;
    len = sizeof on;
    if (getsockopt(sockfd, SOL_SOCKET, PAF_SO_PASSPIDFD, &on, &len) == 0 && on)
        space += PAF_PIDFD_SPACE;
    return space;
}

/*
 * close_range(2) closes a run of consecutive descriptors in one system call:
 * duplicates made one after another usually are such a run (the kernel
 * hands out the lowest free numbers).  Only a run made wholly of the
 * descriptors given is closed that way, so nothing else can be hit.
 */
static int close_run(int first, int last)
{
#ifdef SYS_close_range
    /* Older kernels answer ENOSYS: the caller closes them one by one. */
    return (int)syscall(SYS_close_range, (unsigned)first, (unsigned)last, 0u);
#else
    (void)first;
    (void)last;
    return -1;
#endif
}

void paf_close_all(const int *fds, int n)
{
    int i = 0;

    while (i < n) {
        int j = i + 1;

        while (j < n && fds[j - 1] >= 0 && fds[j] == fds[j - 1] + 1)
            j++;
        if (j - i < 2 || fds[i] < 0 || close_run(fds[i], fds[j - 1]) < 0) {
            for (; i < j; i++)
                close(fds[i]);
        }
        i = j;
    }
}

int paf_dup_all(const int *fds, int n, int *out)
{
    for (int i = 0; i < n; i++) {
        out[i] = fcntl(fds[i], F_DUPFD_CLOEXEC, 0);
        if (out[i] < 0) {
            int saved = errno;

            paf_close_all(out, i);
            errno = saved;
            return -1;
        }
    }
    return 0;
}

ssize_t paf_sendmsg(int sockfd, const struct iovec *iov, int iovcnt,
                    const int *fds, int nfds, int flags)
{
    union paf_cmsgbuf control;
    struct msghdr msg;
    ssize_t sent;

    if (nfds < 0 || nfds > PAF_MAX_FDS_PER_MESSAGE || iovcnt < 0) {
        errno = EINVAL;
        return -1;
    }
    if (nfds > 0) {
        size_t total = 0;
        for (int i = 0; i < iovcnt; i++)
            total += iov[i].iov_len;
        if (total == 0) {
            errno = EINVAL;
            return -1;
        }
    }

    memset(&msg, 0, sizeof msg);
    msg.msg_iov = (struct iovec *)iov;
    msg.msg_iovlen = (size_t)iovcnt;
    if (nfds > 0) {
        struct cmsghdr *cmsg;
        size_t fdbytes = sizeof(int) * (size_t)nfds;

        memset(control.buf, 0, CMSG_SPACE(fdbytes));
        msg.msg_control = control.buf;
        msg.msg_controllen = CMSG_SPACE(fdbytes);
        cmsg = CMSG_FIRSTHDR(&msg);
        cmsg->cmsg_level = SOL_SOCKET;
        cmsg->cmsg_type = SCM_RIGHTS;
        cmsg->cmsg_len = CMSG_LEN(fdbytes);
        memcpy(CMSG_DATA(cmsg), fds, fdbytes);
    }

    do {
        sent = sendmsg(sockfd, &msg, flags | MSG_NOSIGNAL);
    } while (sent < 0 && errno == EINTR);
    return sent;
}

ssize_t paf_send(int sockfd, const void *buf, size_t len,
                 const int *fds, int nfds, int flags)
{
    struct iovec iov = { (void *)buf, len };
    return paf_sendmsg(sockfd, &iov, 1, fds, nfds, flags);
}

ssize_t paf_recvmsg(int sockfd, void *buf, size_t len,
                    int *fds, int max_fds, int *nfds, int *msg_flags)
{
    union paf_cmsgbuf control;
    struct iovec iov = { buf, len };
    struct msghdr msg;
    struct cmsghdr *cmsg;
    ssize_t got;
    int count = 0, truncated;

    *nfds = 0;
    *msg_flags = 0;
    if (max_fds < 0 || max_fds > PAF_MAX_FDS_PER_MESSAGE) {
        errno = EINVAL;
        return -1;
    }

    memset(&msg, 0, sizeof msg);
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.buf;
    if (max_fds == PAF_MAX_FDS_PER_MESSAGE) {
        /* No message carries more: room to spare for credentials and a
         * pidfd, whether asked for or not, cannot let more in. */
        msg.msg_controllen = sizeof control.buf;
    } else {
        /* Room for exactly max_fds (the kernel counts the room left after
         * the header, not CMSG_SPACE's padding) behind what the socket asked
         * for: room to spare would let the kernel install more descriptors
         * than the caller can take, which is why it asked for fewer. */
        msg.msg_controllen = asked_for_space(sockfd) + CMSG_LEN(sizeof(int) * (size_t)max_fds);
    }

    do {
        got = recvmsg(sockfd, &msg, MSG_CMSG_CLOEXEC);
    } while (got < 0 && errno == EINTR);
    if (got < 0)
        return -1;

    truncated = (msg.msg_flags & MSG_CTRUNC) != 0;
    for (cmsg = CMSG_FIRSTHDR(&msg); cmsg != NULL; cmsg = CMSG_NXTHDR(&msg, cmsg)) {
        const unsigned char *data = CMSG_DATA(cmsg);
        size_t n;

        if (cmsg->cmsg_level == SOL_SOCKET && cmsg->cmsg_type == PAF_SCM_PIDFD) {
            /* A pidfd the kernel attached because the socket asked for
             * them (SO_PASSPIDFD): installed in our table, and not one of
             * the peer's descriptors, so close it rather than leak it.
             * Closed here, unlike the peer's descriptors, because closing a
             * pidfd cannot block: it refers to a process, and holds no data
             * that must leave first. */
            if (cmsg->cmsg_len >= CMSG_LEN(sizeof(int))) {
                int pidfd;

                memcpy(&pidfd, data, sizeof pidfd);
                close(pidfd);
            }
            continue;
        }
        if (cmsg->cmsg_level != SOL_SOCKET || cmsg->cmsg_type != SCM_RIGHTS)
            continue;
        n = (cmsg->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (size_t i = 0; i < n; i++) {
            int fd;

            memcpy(&fd, data + i * sizeof(int), sizeof fd);
            if (count < PAF_MAX_FDS_PER_MESSAGE) {
                /* Past max_fds too (should the kernel ever use more room
                 * than it was given): installed in our table all the same,
                 * reported as a truncation, and the caller's to close. */
                fds[count++] = fd;
            } else {
                /* Cannot happen: a stream recvmsg returns at most one
                 * SCM_RIGHTS message, and a message carries at most
                 * SCM_MAX_FD descriptors.  Should a kernel ever send more,
                 * not leaking them is all that can be done. */
                close(fd);
                truncated = 1;
            }
        }
    }

    if (count > max_fds)
        truncated = 1;
    if (truncated) {
        /* An unknown number of descriptors was lost, so none of the ordinals
         * after this point can be trusted: the caller closes what arrived. */
        msg.msg_flags |= MSG_CTRUNC;
    }
    *msg_flags = msg.msg_flags;
    *nfds = count;
    return got;
}
