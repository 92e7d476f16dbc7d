#include "ampbox.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* A buffer that grows; every array the decoder keeps is one. */
struct buffer {
    void *p;
    size_t cap; /* bytes */
};

struct paf_decoder {
    /* The last feed's report (see ampbox.h). */
    struct buffer format;   /* char: the struct format, NUL-terminated */
    size_t format_len;
    struct buffer fields;   /* size_t per box: its key/value pairs */
    struct buffer ends;     /* size_t per box: its end in the source */
    size_t nboxes;
    int from_input;
    int error;              /* the errno every feed fails with, once failed */
    size_t error_offset;

    struct buffer buf;      /* bytes of the partial box, from its first byte */
    size_t len;             /* bytes in buf (all of them the source while !from_input) */
    size_t consumed;        /* leading bytes of buf that the last feed reported in boxes */
    size_t scan;            /* offset in buf of the next field header not yet checked */
    size_t max_box_size;
};

enum scan_result { SCAN_COMPLETE, SCAN_INCOMPLETE, SCAN_KEY_TOO_LONG };

static unsigned read_u16(const uint8_t *p)
{
    return ((unsigned)p[0] << 8) | p[1];
}

/* Makes room for need bytes in b, doubling from 64.  Returns 0, or -1 with
 * errno ENOMEM and b unchanged. */
static int reserve(struct buffer *b, size_t need)
{
    size_t n;
    void *p;

    if (need <= b->cap)
        return 0;
    n = b->cap ? b->cap : 64;
    while (n < need) {
        if (n > SIZE_MAX / 2) {
            errno = ENOMEM;
            return -1;
        }
        n *= 2;
    }
    p = realloc(b->p, n);
    if (p == NULL) {
        errno = ENOMEM;
        return -1;
    }
    b->p = p;
    b->cap = n;
    return 0;
}

/* Longest format one field adds: "2x255s2x65535s". */
#define FIELD_FORMAT_MAX 14

/* Appends "2x<n>s", the struct format that skips a length prefix and takes n bytes. */
static char *format_part(char *out, unsigned n)
{
    char digits[5];
    int i = 0;

    *out++ = '2';
    *out++ = 'x';
    do {
        digits[i++] = (char)('0' + n % 10);
        n /= 10;
    } while (n > 0);
    while (i > 0)
        *out++ = digits[--i];
    *out++ = 's';
    return out;
}

/*
 * Walks the field headers from *pos (a field boundary inside a box) without
 * reading the values.  On SCAN_COMPLETE *pos is the box's end; on
 * SCAN_INCOMPLETE *pos is the last field boundary reached and *need the
 * length the source must reach before more can be learned; on
 * SCAN_KEY_TOO_LONG *pos is the offending prefix.
 */
static enum scan_result scan_box(const uint8_t *p, size_t n, size_t *pos, size_t *need)
{
    size_t at = *pos;

    for (;;) {
        size_t klen, vlen;

        if (n - at < 2) {
            *need = at + 2;
            break;
        }
        klen = read_u16(p + at);
        if (klen == 0) {
            *pos = at + 2;
            return SCAN_COMPLETE;
        }
        if (klen > PAF_AMP_MAX_KEY_LENGTH) {
            *pos = at;
            return SCAN_KEY_TOO_LONG;
        }
        if (n - at < 4 + klen) {
            *need = at + 4 + klen;
            break;
        }
        vlen = read_u16(p + at + 2 + klen);
        if (n - at < 4 + klen + vlen) {
            *need = at + 4 + klen + vlen;
            break;
        }
        at += 4 + klen + vlen;
    }
    *pos = at;
    return SCAN_INCOMPLETE;
}

/* Adds a box already scanned as complete to the report.  Returns 0, or -1
 * with errno ENOMEM and the report as it was. */
static int emit_box(paf_decoder *d, const uint8_t *p, size_t start, size_t end)
{
    size_t at = start, nfields = 0, flen = d->format_len;

    while (at + 2 < end) {
        unsigned klen = read_u16(p + at);
        unsigned vlen = read_u16(p + at + 2 + klen);
        char *f;

        if (reserve(&d->format, flen + FIELD_FORMAT_MAX) < 0)
            goto no_memory;
        f = (char *)d->format.p + flen;
        f = format_part(f, klen);
        f = format_part(f, vlen);
        flen = (size_t)(f - (char *)d->format.p);
        nfields++;
        at += 4 + klen + vlen;
    }
    if (reserve(&d->format, flen + 3) < 0 ||
        reserve(&d->fields, (d->nboxes + 1) * sizeof(size_t)) < 0 ||
        reserve(&d->ends, (d->nboxes + 1) * sizeof(size_t)) < 0)
        goto no_memory;
    memcpy((char *)d->format.p + flen, "2x", 3);
    d->format_len = flen + 2;
    ((size_t *)d->fields.p)[d->nboxes] = nfields;
    ((size_t *)d->ends.p)[d->nboxes] = end;
    d->nboxes++;
    return 0;

no_memory:
    /* The fields written so far are not part of any box reported. */
    if (d->format.p != NULL)
        ((char *)d->format.p)[d->format_len] = '\0';
    return -1;
}

/* Empties the report. */
static void clear_report(paf_decoder *d)
{
    d->nboxes = d->format_len = 0;
    if (d->format.p != NULL)
        *(char *)d->format.p = '\0';
}

paf_decoder *paf_decoder_new(size_t max_box_size)
{
    paf_decoder *d = calloc(1, sizeof *d);

    if (d == NULL) {
        errno = ENOMEM;
        return NULL;
    }
    d->max_box_size = max_box_size;
    return d;
}

void paf_decoder_free(paf_decoder *d)
{
    if (d == NULL)
        return;
    free(d->format.p);
    free(d->fields.p);
    free(d->ends.p);
    free(d->buf.p);
    free(d);
}

size_t paf_decoder_boxes(const paf_decoder *d)
{
    return d->nboxes;
}

int paf_decoder_from_input(const paf_decoder *d)
{
    return d->from_input;
}

const char *paf_decoder_format(const paf_decoder *d)
{
    return d->format_len ? (const char *)d->format.p : "";
}

const size_t *paf_decoder_box_fields(const paf_decoder *d)
{
    return d->fields.p;
}

const size_t *paf_decoder_box_ends(const paf_decoder *d)
{
    return d->ends.p;
}

size_t paf_decoder_error_offset(const paf_decoder *d)
{
    return d->error_offset;
}

const uint8_t *paf_decoder_held(const paf_decoder *d, size_t *len)
{
    *len = d->len;
    return d->buf.p;
}

size_t paf_decoder_pending(const paf_decoder *d)
{
    return d->len - d->consumed;
}

void paf_decoder_reset(paf_decoder *d)
{
    d->len = d->consumed = d->scan = 0;
    d->from_input = 0;
    d->error = 0;
    d->error_offset = 0;
    clear_report(d);
}

/* Fails the decoder for good with error, at offset in the source. */
static int fail(paf_decoder *d, int error, size_t offset)
{
    d->error = error;
    d->error_offset = offset;
    errno = error;
    return -1;
}

/*
 * Scans whole boxes in p[0..n) from *box_start, the first byte of a box,
 * resuming its header walk at *scan.  Leaves *box_start at the first box not
 * complete and *scan at the boundary reached inside it.  Returns 0, or -1
 * with the decoder failed.
 */
static int decode(paf_decoder *d, const uint8_t *p, size_t n, size_t *box_start, size_t *scan)
{
    for (;;) {
        size_t pos = *scan, need = 0;
        enum scan_result r = scan_box(p, n, &pos, &need);

        if (r == SCAN_KEY_TOO_LONG) {
            /* A prefix the box could not reach within the limit is refused
             * as the box's size, as it is when the stream stops short of it:
             * the error must not depend on how the stream was cut. */
            if (pos + 2 - *box_start > d->max_box_size)
                return fail(d, EMSGSIZE, *box_start);
            return fail(d, ENAMETOOLONG, pos);
        }
        if (r == SCAN_INCOMPLETE) {
            /* need is what the box is known to reach: refuse it as soon as
             * that is already too long, before buffering the rest (once the
             * box has begun: no bytes yet is no box). */
            if (n > *box_start && need - *box_start > d->max_box_size)
                return fail(d, EMSGSIZE, *box_start);
            *scan = pos;
            return 0;
        }
        if (pos - *box_start > d->max_box_size)
            return fail(d, EMSGSIZE, *box_start);
        if (emit_box(d, p, *box_start, pos) < 0)
            return fail(d, ENOMEM, *box_start);
        *box_start = *scan = pos;
    }
}

ssize_t paf_decoder_feed(paf_decoder *d, const uint8_t *data, size_t len)
{
    size_t box_start, scan;

    clear_report(d);
    if (d->error) {
        errno = d->error;
        return -1;
    }

    /* Drop what the previous feed reported; the partial box moves to the front. */
    if (d->consumed > 0) {
        memmove(d->buf.p, (uint8_t *)d->buf.p + d->consumed, d->len - d->consumed);
        d->len -= d->consumed;
        d->consumed = 0;
    }

    if (d->len == 0) {
        /* Nothing held: decode straight from the caller's bytes and keep
         * only the tail of a box that is not complete yet. */
        d->from_input = 1;
        box_start = scan = 0;
        if (decode(d, data, len, &box_start, &scan) < 0)
            return -1;
        if (reserve(&d->buf, len - box_start) < 0)
            return fail(d, ENOMEM, box_start);
        if (len > box_start)
            memcpy(d->buf.p, data + box_start, len - box_start);
        d->len = len - box_start;
        d->scan = scan - box_start;
        return (ssize_t)d->nboxes;
    }

    d->from_input = 0;
    if (reserve(&d->buf, d->len + len) < 0)
        return fail(d, ENOMEM, 0);
    if (len > 0)
        memcpy((uint8_t *)d->buf.p + d->len, data, len);
    d->len += len;
    box_start = 0;
    scan = d->scan;
    if (decode(d, d->buf.p, d->len, &box_start, &scan) < 0)
        return -1;
    d->consumed = box_start;
    d->scan = scan - box_start;
    return (ssize_t)d->nboxes;
}

/* Refuses an encoding with errno error, entry index at fault. */
static ssize_t refuse(int error, size_t index, size_t *bad_index)
{
    *bad_index = index;
    errno = error;
    return -1;
}

ssize_t paf_encode(const uint8_t *data, size_t data_len,
                   const int32_t *lens, size_t nlens,
                   uint8_t *out, size_t out_cap, size_t *bad_index)
{
    size_t in = 0, at = 0;
    int is_key = 1, box_open = 0;

    for (size_t i = 0; i < nlens; i++) {
        size_t n;

        if (lens[i] < 0)
            return refuse(EINVAL, i, bad_index);
        n = (size_t)lens[i];
        if (is_key && n > PAF_AMP_MAX_KEY_LENGTH)
            return refuse(ENAMETOOLONG, i, bad_index);
        if (!is_key && n > PAF_AMP_MAX_VALUE_LENGTH)
            return refuse(EMSGSIZE, i, bad_index);
        if (n > data_len - in)
            return refuse(EINVAL, i, bad_index);
        if (out_cap - at < 2 + n)
            return refuse(ENOBUFS, i, bad_index);
        out[at] = (uint8_t)(n >> 8);
        out[at + 1] = (uint8_t)n;
        /* data may be NULL when every box is empty: no arithmetic on it then. */
        if (n > 0)
            memcpy(out + at + 2, data + in, n);
        at += 2 + n;
        in += n;
        if (is_key) {
            /* A key, or the empty one that ends the box. */
            box_open = n > 0;
            is_key = n == 0;
        } else {
            is_key = 1;
        }
    }
    if (box_open || in != data_len)
        return refuse(EINVAL, nlens, bad_index);
    return (ssize_t)at;
}
