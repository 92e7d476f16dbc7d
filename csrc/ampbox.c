#include "ampbox.h"

#include <stdlib.h>
#include <string.h>

enum scan_result { SCAN_COMPLETE, SCAN_INCOMPLETE, SCAN_KEY_TOO_LONG };

static unsigned read_u16(const uint8_t *p)
{
    return ((unsigned)p[0] << 8) | p[1];
}

static size_t grown(size_t cap, size_t need)
{
    size_t n = cap ? cap : 64;

    while (n < need)
        n *= 2;
    return n;
}

static int reserve_parts(paf_decoder *d, size_t need)
{
    size_t n;
    size_t *s, *e;

    if (need <= d->parts_cap)
        return 0;
    n = grown(d->parts_cap, need);
    s = realloc(d->starts, n * sizeof *s);
    if (s == NULL)
        return -1;
    d->starts = s;
    e = realloc(d->ends, n * sizeof *e);
    if (e == NULL)
        return -1;
    d->ends = e;
    d->parts_cap = n;
    return 0;
}

static int reserve_boxes(paf_decoder *d, size_t need)
{
    size_t n;
    size_t *f, *e;

    if (need <= d->boxes_cap)
        return 0;
    n = grown(d->boxes_cap, need);
    f = realloc(d->box_fields, n * sizeof *f);
    if (f == NULL)
        return -1;
    d->box_fields = f;
    e = realloc(d->box_ends, n * sizeof *e);
    if (e == NULL)
        return -1;
    d->box_ends = e;
    d->boxes_cap = n;
    return 0;
}

static int reserve_format(paf_decoder *d, size_t need)
{
    size_t n;
    char *f;

    if (need <= d->format_cap)
        return 0;
    n = grown(d->format_cap, need);
    f = realloc(d->format, n);
    if (f == NULL)
        return -1;
    d->format = f;
    d->format_cap = n;
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

static int reserve_bytes(paf_decoder *d, size_t need)
{
    size_t n;
    uint8_t *b;

    if (need <= d->cap)
        return 0;
    n = grown(d->cap, need);
    b = realloc(d->buf, n);
    if (b == NULL)
        return -1;
    d->buf = b;
    d->cap = n;
    return 0;
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

/* Records the spans of a box already scanned as complete. */
static int emit_box(paf_decoder *d, const uint8_t *p, size_t start, size_t end)
{
    size_t at = start, fields = 0;

    while (at + 2 < end) {
        size_t klen = read_u16(p + at);
        size_t vlen = read_u16(p + at + 2 + klen);

        if (reserve_parts(d, d->nparts + 2) < 0 ||
            reserve_format(d, d->format_len + FIELD_FORMAT_MAX) < 0)
            return -1;
        {
            char *f = d->format + d->format_len;

            f = format_part(f, (unsigned)klen);
            f = format_part(f, (unsigned)vlen);
            d->format_len = (size_t)(f - d->format);
        }
        d->starts[d->nparts] = at + 2;
        d->ends[d->nparts] = at + 2 + klen;
        d->starts[d->nparts + 1] = at + 4 + klen;
        d->ends[d->nparts + 1] = at + 4 + klen + vlen;
        d->nparts += 2;
        fields++;
        at += 4 + klen + vlen;
    }
    if (reserve_boxes(d, d->nboxes + 1) < 0 || reserve_format(d, d->format_len + 3) < 0)
        return -1;
    memcpy(d->format + d->format_len, "2x", 3);
    d->format_len += 2;
    d->box_fields[d->nboxes] = fields;
    d->box_ends[d->nboxes] = end;
    d->nboxes++;
    return 0;
}

paf_decoder *paf_decoder_new(size_t max_box_size)
{
    paf_decoder *d = calloc(1, sizeof *d);

    if (d != NULL)
        d->max_box_size = max_box_size;
    return d;
}

void paf_decoder_free(paf_decoder *d)
{
    if (d == NULL)
        return;
    free(d->starts);
    free(d->ends);
    free(d->box_fields);
    free(d->box_ends);
    free(d->format);
    free(d->buf);
    free(d);
}

size_t paf_decoder_pending(const paf_decoder *d)
{
    return d->len - d->consumed;
}

void paf_decoder_reset(paf_decoder *d)
{
    d->len = d->consumed = d->scan = 0;
    d->nparts = d->nboxes = d->format_len = 0;
    d->error = PAF_DECODE_OK;
}

static int fail(paf_decoder *d, int error, size_t offset)
{
    d->error = error;
    d->error_offset = offset;
    return error;
}

/*
 * Scans whole boxes in p[0..n) from *box_start, the first byte of a box,
 * resuming its header walk at *scan.  Leaves *box_start at the first box not
 * complete and *scan at the boundary reached inside it.
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
                return fail(d, PAF_DECODE_BOX_TOO_LARGE, *box_start);
            return fail(d, PAF_DECODE_KEY_TOO_LONG, pos);
        }
        if (r == SCAN_INCOMPLETE) {
            /* need is what the box is known to reach: refuse it as soon as
             * that is already too long, before buffering the rest (once the
             * box has begun: no bytes yet is no box). */
            if (n > *box_start && need - *box_start > d->max_box_size)
                return fail(d, PAF_DECODE_BOX_TOO_LARGE, *box_start);
            *scan = pos;
            return PAF_DECODE_OK;
        }
        if (pos - *box_start > d->max_box_size)
            return fail(d, PAF_DECODE_BOX_TOO_LARGE, *box_start);
        if (emit_box(d, p, *box_start, pos) < 0)
            return fail(d, PAF_DECODE_NO_MEMORY, *box_start);
        *box_start = *scan = pos;
    }
}

int paf_decoder_feed(paf_decoder *d, const uint8_t *data, size_t len)
{
    size_t box_start, scan;
    int err;

    d->nparts = d->nboxes = d->format_len = 0;
    if (d->error)
        return d->error;

    /* Drop what the previous feed reported; the partial box moves to the front. */
    if (d->consumed > 0) {
        memmove(d->buf, d->buf + d->consumed, d->len - d->consumed);
        d->len -= d->consumed;
        d->consumed = 0;
    }

    if (d->len == 0) {
        /* Nothing held: decode straight from the caller's bytes and keep
         * only the tail of a box that is not complete yet. */
        d->from_input = 1;
        box_start = scan = 0;
        err = decode(d, data, len, &box_start, &scan);
        if (err != PAF_DECODE_OK)
            return err;
        if (reserve_bytes(d, len - box_start) < 0)
            return fail(d, PAF_DECODE_NO_MEMORY, box_start);
        if (len > box_start)
            memcpy(d->buf, data + box_start, len - box_start);
        d->len = len - box_start;
        d->scan = scan - box_start;
        return PAF_DECODE_OK;
    }

    d->from_input = 0;
    if (reserve_bytes(d, d->len + len) < 0)
        return fail(d, PAF_DECODE_NO_MEMORY, 0);
    if (len > 0)
        memcpy(d->buf + d->len, data, len);
    d->len += len;
    box_start = 0;
    scan = d->scan;
    err = decode(d, d->buf, d->len, &box_start, &scan);
    if (err != PAF_DECODE_OK)
        return err;
    d->consumed = box_start;
    d->scan = scan - box_start;
    return PAF_DECODE_OK;
}

ssize_t paf_encode(const uint8_t *data, size_t data_len,
                   const int32_t *lens, size_t nlens,
                   uint8_t *out, size_t out_cap, size_t *bad_index)
{
    size_t in = 0, at = 0;
    int is_key = 1, box_open = 0;

    for (size_t i = 0; i < nlens; i++) {
        size_t n;

        *bad_index = i;
        if (lens[i] < 0)
            return -PAF_ENCODE_BAD_LAYOUT;
        n = (size_t)lens[i];
        if (is_key && n > PAF_AMP_MAX_KEY_LENGTH)
            return -PAF_ENCODE_KEY_TOO_LONG;
        if (!is_key && n > PAF_AMP_MAX_VALUE_LENGTH)
            return -PAF_ENCODE_VALUE_TOO_LONG;
        if (n > data_len - in)
            return -PAF_ENCODE_BAD_LAYOUT;
        if (out_cap - at < 2 + n)
            return -PAF_ENCODE_NO_ROOM;
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
    if (box_open || in != data_len) {
        *bad_index = nlens;
        return -PAF_ENCODE_BAD_LAYOUT;
    }
    return (ssize_t)at;
}
