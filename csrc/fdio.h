/*
 * Batched descriptor passing over a connected AF_UNIX stream socket.
 *
 * Errors, as in ampbox.h: a function that can fail returns -1 with errno set
 * (the system call's own errno, or EINVAL for arguments refused before any
 * call); the others cannot fail.
 */
#ifndef PAF_FDIO_H
#define PAF_FDIO_H

#include <stddef.h>
#include <sys/types.h>
#include <sys/uio.h>

/* The kernel's SCM_MAX_FD: the most descriptors one sendmsg may carry. */
#define PAF_MAX_FDS_PER_MESSAGE 253

/*
 * One sendmsg of iovcnt buffers with nfds descriptors attached (nfds may be 0),
 * MSG_NOSIGNAL, EINTR retried.  Descriptors need at least one byte of data to
 * travel with; nfds > PAF_MAX_FDS_PER_MESSAGE or nfds > 0 with no data fails
 * with EINVAL before anything is sent.  Returns the bytes accepted (the
 * descriptors went with the first of them), or -1 with errno set.
 */
ssize_t paf_sendmsg(int sockfd, const struct iovec *iov, int iovcnt,
                    const int *fds, int nfds, int flags);

/* paf_sendmsg with one buffer. */
ssize_t paf_send(int sockfd, const void *buf, size_t len,
                 const int *fds, int nfds, int flags);

/*
 * One recvmsg of up to len bytes with room for max_fds descriptors,
 * MSG_CMSG_CLOEXEC, EINTR retried.  Room for fewer than
 * PAF_MAX_FDS_PER_MESSAGE is exact, behind room for the control messages the
 * socket asked for (SO_PASSCRED, SO_PASSPIDFD: two getsockopt calls), so that
 * the kernel installs no more than max_fds.  fds must have room for
 * PAF_MAX_FDS_PER_MESSAGE descriptors whatever max_fds is: every descriptor
 * of every SCM_RIGHTS message is stored there, in order, and counted in
 * *nfds, even past max_fds (a stream recvmsg returns at most one message
 * carrying descriptors, and a message carries at most SCM_MAX_FD).  If the
 * kernel had to drop descriptors (MSG_CTRUNC), or more than max_fds arrived,
 * MSG_CTRUNC is set in *msg_flags and the descriptors that did arrive are
 * still returned, open: no later ordinal can be trusted, so the caller must
 * close them all, and it chooses where (closing a peer's descriptor may
 * block).  Descriptors of other control messages (SCM_PIDFD) are closed
 * here.  Those the kernel drops it releases itself, in the calling thread
 * (a last reference to a socket with SO_LINGER blocks this call for its
 * linger time): only room for a whole message avoids that.  *msg_flags is
 * the kernel's msg_flags.  Returns the bytes read (0 at
 * end of stream; the data is returned on truncation too), or -1 with errno
 * set and no descriptor kept.
 */
ssize_t paf_recvmsg(int sockfd, void *buf, size_t len,
                    int *fds, int max_fds, int *nfds, int *msg_flags);

/*
 * Duplicates n descriptors into out, close-on-exec (F_DUPFD_CLOEXEC), in
 * order.  Returns 0, or -1 with errno set and none left open: those made
 * before the failure are closed again.
 */
int paf_dup_all(const int *fds, int n, int *out);

/* Closes n descriptors, ignoring errors (EINTR on close must not be retried on
 * Linux); runs of consecutive numbers in one close_range(2) where the kernel has it. */
void paf_close_all(const int *fds, int n);

#endif
