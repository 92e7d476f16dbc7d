#include "check_box.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

void bytes_put(struct bytes *b, const void *data, size_t n)
{
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 256;

        while (cap < b->len + n)
            cap *= 2;
        b->p = realloc(b->p, cap);
        BOX_CHECK(b->p != NULL);
        b->cap = cap;
    }
    if (n > 0 && data != NULL)
        memcpy(b->p + b->len, data, n);
    b->len += n;
}

void bytes_put_u16(struct bytes *b, size_t n)
{
    uint8_t be[2] = { (uint8_t)(n >> 8), (uint8_t)n };

    BOX_CHECK(n <= 0xffff);
    bytes_put(b, be, 2);
}

void bytes_free(struct bytes *b)
{
    free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
}

unsigned u16_at(const uint8_t *p)
{
    return ((unsigned)p[0] << 8) | p[1];
}

/* ---- decoding -------------------------------------------------------------- */

/* What a plain reading of bytes gives: the boxes complete in them, then a fault or not. */
struct reading {
    size_t nboxes;
    size_t end;      /* of the last complete box, 0 if none */
    int error;       /* 0, ENAMETOOLONG or EMSGSIZE */
    size_t error_at;
};

/*
 * Reads p[0..n), the start of a stream, box after box, header by header: a
 * box is refused (EMSGSIZE) as soon as the length it is known to reach
 * passes max, and a key length prefix over 255 (ENAMETOOLONG) as soon as it
 * is read, whichever comes first, so that the outcome cannot depend on how
 * the stream is cut.
 */
static void read_boxes(const uint8_t *p, size_t n, size_t max, struct reading *r)
{
    size_t start = 0;

    memset(r, 0, sizeof *r);
    for (;;) {
        size_t at = start;

        for (;;) {
            size_t klen, vlen;

            if (n > start && at + 2 - start > max)
                goto too_large;
            if (n - at < 2)
                return;
            klen = u16_at(p + at);
            if (klen == 0)
                break;
            if (klen > PAF_AMP_MAX_KEY_LENGTH) {
                r->error = ENAMETOOLONG;
                r->error_at = at;
                return;
            }
            if (at + 4 + klen - start > max)
                goto too_large;
            if (n - at < 4 + klen)
                return;
            vlen = u16_at(p + at + 2 + klen);
            if (at + 4 + klen + vlen - start > max)
                goto too_large;
            if (n - at < 4 + klen + vlen)
                return;
            at += 4 + klen + vlen;
        }
        start = r->end = at + 2;
        r->nboxes++;
    }
too_large:
    r->error = EMSGSIZE;
    r->error_at = start;
}

/* Reads the next "<count><code>" of a struct format; returns the count. */
static size_t format_token(const char **f, char *code)
{
    size_t count = 0;

    BOX_CHECK(**f >= '0' && **f <= '9');
    /* No leading zeros: a format Python would read the same, written one way. */
    BOX_CHECK(**f != '0' || ((*f)[1] < '0' || (*f)[1] > '9'));
    while (**f >= '0' && **f <= '9') {
        BOX_CHECK(count < 100000);
        count = count * 10 + (size_t)(*(*f)++ - '0');
    }
    *code = *(*f)++;
    BOX_CHECK(*code == 's' || *code == 'x');
    return count;
}

/* The next token must skip a length prefix at *pos. */
static void format_skip(const char **f, size_t *pos)
{
    char code;

    BOX_CHECK(format_token(f, &code) == 2 && code == 'x');
    *pos += 2;
}

/* The next token must take n bytes at *pos; appends them to out as on the wire. */
static void format_take(const char **f, size_t *pos, size_t n, const uint8_t *src,
                        struct bytes *out)
{
    char code;

    BOX_CHECK(format_token(f, &code) == n && code == 's');
    bytes_put_u16(out, n);
    bytes_put(out, src + *pos, n);
    *pos += n;
}

void decoded_init(struct decoded *s, const uint8_t *stream, size_t max_box_size)
{
    memset(s, 0, sizeof *s);
    s->stream = stream;
    s->max_box_size = max_box_size;
}

void decoded_free(struct decoded *s)
{
    bytes_free(&s->boxes);
}

ssize_t check_feed(paf_decoder *d, struct decoded *s, size_t len)
{
    const uint8_t *src = s->stream + s->consumed;
    size_t srclen, held_len, pos = 0, start = 0, held_before;
    const size_t *fields, *ends;
    const uint8_t *held;
    const char *f;
    struct reading r;
    ssize_t ret;
    int err;

    held_before = paf_decoder_pending(d);
    errno = 0;
    ret = paf_decoder_feed(d, s->stream + s->fed, len);
    err = ret < 0 ? errno : 0;
    s->fed += len;
    f = paf_decoder_format(d);
    BOX_CHECK(f != NULL);

    if (s->error) {
        /* Failed already: failed for good, and nothing more reported. */
        BOX_CHECK(ret == -1 && err == s->error);
        BOX_CHECK(paf_decoder_boxes(d) == 0 && *f == '\0');
        errno = err;
        return ret;
    }

    /* The source is the stream from the first byte not in a reported box. */
    srclen = s->fed - s->consumed;
    held = paf_decoder_held(d, &held_len);
    if (paf_decoder_from_input(d)) {
        BOX_CHECK(held_before == 0 && srclen == len);
    } else {
        /* The held bytes, the source, are what was fed.  All of them are
         * compared when boxes are cut out of them; otherwise the input just
         * appended (so that a box fed a byte at a time costs no more than
         * its length to check, not its square). */
        BOX_CHECK(held_before + len == srclen);
        BOX_CHECK(held_len == srclen);
        if (paf_decoder_boxes(d) > 0)
            BOX_CHECK(memcmp(held, src, srclen) == 0);
        else
            BOX_CHECK(len == 0 || memcmp(held + srclen - len, src + srclen - len, len) == 0);
    }

    /* The same boxes, and the same fault, as a plain reading. */
    read_boxes(src, srclen, s->max_box_size, &r);
    BOX_CHECK(err == r.error);
    BOX_CHECK(paf_decoder_boxes(d) == r.nboxes);
    BOX_CHECK(ret == (r.error ? -1 : (ssize_t)r.nboxes));
    if (r.error)
        BOX_CHECK(paf_decoder_error_offset(d) == r.error_at);

    /* The format lands on every key and value, in wire order, and each box
     * ends where the wire says. */
    fields = paf_decoder_box_fields(d);
    ends = paf_decoder_box_ends(d);
    for (size_t j = 0; j < r.nboxes; j++) {
        size_t at = start, nfields = 0;

        for (;;) {
            size_t klen, vlen;

            BOX_CHECK(pos == at);
            klen = u16_at(src + at);
            format_skip(&f, &pos);
            if (klen == 0)
                break;
            format_take(&f, &pos, klen, src, &s->boxes);
            vlen = u16_at(src + pos);
            format_skip(&f, &pos);
            format_take(&f, &pos, vlen, src, &s->boxes);
            at = pos;
            nfields++;
        }
        bytes_put_u16(&s->boxes, 0);
        BOX_CHECK(fields[j] == nfields);
        BOX_CHECK(ends[j] == pos);
        BOX_CHECK(ends[j] - start <= s->max_box_size);
        start = pos;
    }
    BOX_CHECK(*f == '\0');
    BOX_CHECK(start == r.end);
    s->nboxes += r.nboxes;
    s->consumed += r.end;

    if (r.error) {
        s->error = r.error;
        s->error_at = s->consumed - r.end + r.error_at;
    } else {
        /* Every byte not in a box is held, and is where the caller finds it. */
        BOX_CHECK(paf_decoder_pending(d) == s->fed - s->consumed);
        if (r.nboxes == 0 && paf_decoder_from_input(d)) {
            /* The input is held whole, for the feeds to come. */
            held = paf_decoder_held(d, &held_len);
            BOX_CHECK(held_len == srclen);
            BOX_CHECK(srclen == 0 || memcmp(held, src, srclen) == 0);
        }
    }
    /* As paf_decoder_feed left it, for the caller to check. */
    errno = err;
    return ret;
}

/* ---- encoding -------------------------------------------------------------- */

int expected_encode(const int32_t *lens, size_t nlens, size_t data_len, size_t *bad)
{
    size_t in = 0;
    int is_key = 1, box_open = 0;

    for (size_t i = 0; i < nlens; i++) {
        *bad = i;
        if (lens[i] < 0)
            return EINVAL;
        if (is_key && lens[i] > PAF_AMP_MAX_KEY_LENGTH)
            return ENAMETOOLONG;
        if (!is_key && lens[i] > PAF_AMP_MAX_VALUE_LENGTH)
            return EMSGSIZE;
        if ((size_t)lens[i] > data_len - in)
            return EINVAL;
        in += (size_t)lens[i];
        if (!is_key) {
            is_key = 1;
        } else if (lens[i] > 0) {
            box_open = 1;
            is_key = 0;
        } else {
            box_open = 0;
        }
    }
    *bad = nlens;
    return box_open || in != data_len ? EINVAL : 0;
}

struct bytes check_encode(const uint8_t *data, size_t data_len, const int32_t *lens,
                          size_t nlens, int *error)
{
    struct bytes out = { 0 }, wire = { 0 };
    size_t need = data_len + 2 * nlens, bad = SIZE_MAX, expected_bad = SIZE_MAX, in = 0;
    ssize_t written;
    int expected = expected_encode(lens, nlens, data_len, &expected_bad);

    /* A byte short of what is accepted is refused at the last entry, which
     * no longer fits.  Each output is a block of its own, exactly as long
     * as the room given, so that ASan sees any byte written past it. */
    if (!expected && need > 0) {
        uint8_t *short_out = malloc(need - 1 ? need - 1 : 1);

        BOX_CHECK(short_out != NULL);
        errno = 0;
        written = paf_encode(data, data_len, lens, nlens, short_out, need - 1, &bad);
        BOX_CHECK(written == -1 && errno == ENOBUFS && bad == nlens - 1);
        free(short_out);
    }

    out.p = malloc(need ? need : 1);
    BOX_CHECK(out.p != NULL);
    out.cap = need ? need : 1;
    errno = 0;
    written = paf_encode(data, data_len, lens, nlens, out.p, need, &bad);
    *error = expected;
    if (expected) {
        BOX_CHECK(written == -1 && errno == expected && bad == expected_bad);
        bytes_free(&out);
        return out;
    }
    BOX_CHECK(written >= 0 && (size_t)written == need);
    out.len = need;

    /* What a plain encoder writes: each length, then its bytes. */
    for (size_t i = 0; i < nlens; i++) {
        bytes_put_u16(&wire, (size_t)lens[i]);
        if (lens[i] > 0)
            bytes_put(&wire, data + in, (size_t)lens[i]);
        in += (size_t)lens[i];
    }
    BOX_CHECK(wire.len == need && (need == 0 || memcmp(wire.p, out.p, need) == 0));
    bytes_free(&wire);
    return out;
}
