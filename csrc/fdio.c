#define _GNU_SOURCE
#include "fdio.h"

#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* Control buffer for the largest message we send or accept, aligned for cmsghdr. */
union paf_cmsgbuf {
    char buf[CMSG_SPACE(sizeof(int) * PAF_MAX_FDS_PER_MESSAGE)];
    struct cmsghdr align;
};

void paf_close_all(const int *fds, int n)
{
    for (int i = 0; i < n; i++)
        close(fds[i]);
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
    int count = 0;

    *nfds = 0;
    *msg_flags = 0;
    if (max_fds < 0 || max_fds > PAF_MAX_FDS_PER_MESSAGE) {
        errno = EINVAL;
        return -1;
    }

    memset(&msg, 0, sizeof msg);
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    /* Room for exactly max_fds: anything more is the kernel's MSG_CTRUNC. */
    msg.msg_control = max_fds > 0 ? control.buf : NULL;
    msg.msg_controllen = max_fds > 0 ? CMSG_SPACE(sizeof(int) * (size_t)max_fds) : 0;

    do {
        got = recvmsg(sockfd, &msg, MSG_CMSG_CLOEXEC);
    } while (got < 0 && errno == EINTR);
    if (got < 0)
        return -1;

    for (cmsg = CMSG_FIRSTHDR(&msg); cmsg != NULL; cmsg = CMSG_NXTHDR(&msg, cmsg)) {
        size_t payload, n;

        if (cmsg->cmsg_level != SOL_SOCKET || cmsg->cmsg_type != SCM_RIGHTS)
            continue;
        payload = cmsg->cmsg_len - CMSG_LEN(0);
        n = payload / sizeof(int);
        /* The buffer was sized for max_fds, so n cannot exceed the room left;
         * the check keeps a kernel surprise from becoming an overflow. */
        if (n > (size_t)(max_fds - count))
            n = (size_t)(max_fds - count);
        memcpy(fds + count, CMSG_DATA(cmsg), n * sizeof(int));
        count += (int)n;
    }

    if (msg.msg_flags & MSG_CTRUNC) {
        /* An unknown number of descriptors was lost, so none of the ordinals
         * after this point can be trusted: keep nothing. */
        paf_close_all(fds, count);
        count = 0;
    }
    *msg_flags = msg.msg_flags;
    *nfds = count;
    return got;
}
