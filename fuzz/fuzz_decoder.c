/*
 * libFuzzer harness for the AMP box decoder and encoder (csrc/ampbox.c).
 *
 * Input: byte 0 picks max_box_size, byte 1 the largest chunk, bytes 2..5 seed
 * the chunk sizes; the rest is the stream, used twice.
 *
 * Decoded as it is, in chunks (empty ones included) and in one feed,
 * everything each feed reports is checked against the source and against
 * ampbox.h: spans, field counts, box ends, the struct format, the held bytes,
 * the error and where it is.  Both decodings must agree with each other and
 * with a plain reference decoder, and paf_encode of the decoded boxes must give
 * back the exact bytes they were decoded from.
 *
 * Read as a list of lengths (see read_lengths), it is handed to paf_encode,
 * which must refuse exactly the lists ampbox.h says it refuses, at the entry
 * it names; what it accepts must decode, by the same checks, to the very keys
 * and values it was given.  Random valid boxes rarely come out of the first
 * direction, and bad lengths never do.
 */
#include "ampbox.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define REQUIRE(cond) \
    do { \
        if (!(cond)) { \
            fprintf(stderr, "%s:%d: invariant broken: %s\n", __FILE__, __LINE__, #cond); \
            abort(); \
        } \
    } while (0)

static const size_t max_box_sizes[] = {
    0, 1, 2, 3, 4, 5, 6, 8, 11, 16, 24, 32, 64, 100, 255, 300, 1000, 4096,
    65540, 65541, 1 << 20, SIZE_MAX,
};
static const size_t max_chunks[] = { 1, 2, 3, 4, 7, 16, 64, 256, 1024, SIZE_MAX };
#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

struct bytes {
    uint8_t *p;
    size_t len, cap;
};

/* Appends n bytes from data, or n bytes for the caller to fill when data is NULL. */
static void put(struct bytes *b, const void *data, size_t n)
{
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n)
            cap *= 2;
        b->p = realloc(b->p, cap);
        REQUIRE(b->p != NULL);
        b->cap = cap;
    }
    if (n > 0 && data != NULL)
        memcpy(b->p + b->len, data, n);
    b->len += n;
}

static void put_u16(struct bytes *b, size_t n)
{
    uint8_t be[2] = { (uint8_t)(n >> 8), (uint8_t)n };
    put(b, be, 2);
}

static unsigned u16_at(const uint8_t *p)
{
    return ((unsigned)p[0] << 8) | p[1];
}

/* What decoding a whole stream must give. */
struct outcome {
    struct bytes boxes;  /* the boxes, rebuilt from the reported spans */
    struct bytes data;   /* their keys and values back to back, for paf_encode */
    struct bytes lens;   /* int32_t lengths, for paf_encode */
    size_t nboxes;
    size_t consumed;     /* stream bytes inside reported boxes */
    int error;
    size_t error_at;     /* in the stream */
};

static void outcome_free(struct outcome *o)
{
    free(o->boxes.p);
    free(o->data.p);
    free(o->lens.p);
}

/*
 * A plain decoder of the whole stream: boxes in order, each walked header by
 * header; a box is refused as soon as the length it is known to reach passes
 * max, and a key length over 255 as soon as it is read, whichever comes first.
 * Only the error and the boxes' extent are computed.
 */
static void reference(const uint8_t *p, size_t n, size_t max, struct outcome *o)
{
    size_t start = 0;

    for (;;) {
        size_t at = start;

        for (;;) {
            size_t klen, vlen;

            if (n > start && at + 2 - start > max)
                goto too_large;
            if (n - at < 2)
                goto incomplete;
            klen = u16_at(p + at);
            if (klen == 0)
                break;
            if (klen > PAF_AMP_MAX_KEY_LENGTH) {
                o->error = PAF_DECODE_KEY_TOO_LONG;
                o->error_at = at;
                goto done;
            }
            if (at + 4 + klen - start > max)
                goto too_large;
            if (n - at < 4 + klen)
                goto incomplete;
            vlen = u16_at(p + at + 2 + klen);
            if (at + 4 + klen + vlen - start > max)
                goto too_large;
            if (n - at < 4 + klen + vlen)
                goto incomplete;
            at += 4 + klen + vlen;
        }
        start = at + 2;
        o->nboxes++;
    }
too_large:
    o->error = PAF_DECODE_BOX_TOO_LARGE;
    o->error_at = start;
    goto done;
incomplete:
    o->error = PAF_DECODE_OK;
done:
    o->consumed = start;
}

/*
 * Checks one feed's report.  stream[0..fed) is every byte fed so far, and
 * held the bytes the decoder held before this feed.  Appends the boxes to o.
 */
static void check_feed(const paf_decoder *d, int err, const uint8_t *stream, size_t fed,
                       size_t input_len, size_t held, size_t max, struct outcome *o)
{
    const uint8_t *src;
    size_t srclen, base, part = 0, start = 0, pos = 0, fmt_part = 0;
    const char *f;

    REQUIRE(err == d->error);
    if (o->error != PAF_DECODE_OK) {
        /* Failed already: failed for good, and nothing more reported. */
        REQUIRE(err == o->error);
        REQUIRE(d->nboxes == 0 && d->nparts == 0 && d->format_len == 0);
        return;
    }

    /* The source is exactly the stream's bytes from where it starts. */
    if (d->from_input) {
        REQUIRE(held == 0);
        srclen = input_len;
        src = stream + fed - input_len;
    } else {
        srclen = d->len;
        src = d->buf;
        REQUIRE(srclen == held + input_len);
        REQUIRE(srclen == 0 || src != NULL);
    }
    base = fed - srclen;
    REQUIRE(base == o->consumed);
    REQUIRE(srclen == 0 || memcmp(src, stream + base, srclen) == 0);

    REQUIRE(d->nparts % 2 == 0);
    for (size_t j = 0; j < d->nboxes; j++) {
        size_t at = start;

        for (size_t k = 0; k < d->box_fields[j]; k++) {
            size_t ks, ke, vs, ve;
            int32_t lens[2];

            REQUIRE(part + 1 < d->nparts);
            ks = d->starts[part];
            ke = d->ends[part];
            vs = d->starts[part + 1];
            ve = d->ends[part + 1];
            REQUIRE(at + 2 <= srclen && ks == at + 2);
            REQUIRE(ks <= ke && ke <= srclen && ke - ks == u16_at(src + at));
            REQUIRE(ke - ks >= 1 && ke - ks <= PAF_AMP_MAX_KEY_LENGTH);
            REQUIRE(ke + 2 <= srclen && vs == ke + 2);
            REQUIRE(vs <= ve && ve <= srclen && ve - vs == u16_at(src + ke));
            put_u16(&o->boxes, ke - ks);
            put(&o->boxes, src + ks, ke - ks);
            put_u16(&o->boxes, ve - vs);
            put(&o->boxes, src + vs, ve - vs);
            put(&o->data, src + ks, ke - ks);
            put(&o->data, src + vs, ve - vs);
            lens[0] = (int32_t)(ke - ks);
            lens[1] = (int32_t)(ve - vs);
            put(&o->lens, lens, sizeof lens);
            at = ve;
            part += 2;
        }
        REQUIRE(at + 2 <= srclen && u16_at(src + at) == 0);
        REQUIRE(d->box_ends[j] == at + 2);
        REQUIRE(d->box_ends[j] - start <= max);
        REQUIRE(j == 0 || d->box_ends[j] > d->box_ends[j - 1]);
        put_u16(&o->boxes, 0);
        {
            int32_t end = 0;
            put(&o->lens, &end, sizeof end);
        }
        start = at + 2;
    }
    REQUIRE(part == d->nparts);
    o->nboxes += d->nboxes;
    o->consumed = base + start;

    /* The format, read from the source's first byte as the struct module
     * reads it, lands on every part in order and ends with the last box. */
    if (d->nboxes > 0) {
        f = d->format;
        REQUIRE(f != NULL && strlen(f) == d->format_len);
        while (*f) {
            size_t count = 0;

            REQUIRE(*f >= '0' && *f <= '9');
            while (*f >= '0' && *f <= '9')
                count = count * 10 + (size_t)(*f++ - '0');
            if (*f == 's') {
                REQUIRE(fmt_part < d->nparts);
                REQUIRE(d->starts[fmt_part] == pos && d->ends[fmt_part] == pos + count);
                fmt_part++;
            } else {
                REQUIRE(*f == 'x' && count == 2);
            }
            pos += count;
            f++;
        }
        REQUIRE(fmt_part == d->nparts && pos == start);
    } else {
        REQUIRE(d->format_len == 0);
    }

    if (err != PAF_DECODE_OK) {
        REQUIRE(d->error_offset >= start && d->error_offset < srclen);
        if (err == PAF_DECODE_KEY_TOO_LONG)
            REQUIRE(d->error_offset + 2 <= srclen &&
                    u16_at(src + d->error_offset) > PAF_AMP_MAX_KEY_LENGTH);
        else
            REQUIRE(err == PAF_DECODE_BOX_TOO_LARGE && d->error_offset == start);
        o->error = err;
        o->error_at = base + d->error_offset;
        return;
    }

    /* Every byte not in a box is held, and is where the caller finds it. */
    REQUIRE(paf_decoder_pending(d) == fed - o->consumed);
    if (d->nboxes == 0)
        REQUIRE(d->len == fed - o->consumed &&
                (d->len == 0 || memcmp(d->buf, stream + o->consumed, d->len) == 0));
}

static uint64_t next(uint64_t *state)
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15ULL);

    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static void decode(const uint8_t *stream, size_t n, size_t max, size_t max_chunk, uint64_t seed,
                   struct outcome *o)
{
    paf_decoder *d = paf_decoder_new(max);
    size_t fed = 0;
    int first = 1;

    REQUIRE(d != NULL);
    while (first || fed < n) {
        size_t len = n - fed, held = o->error ? 0 : paf_decoder_pending(d);
        int err;

        if (max_chunk != SIZE_MAX) {
            size_t want = (size_t)(next(&seed) % (max_chunk + 1));
            if (want < len)
                len = want;
        }
        err = paf_decoder_feed(d, stream + fed, len);
        fed += len;
        check_feed(d, err, stream, fed, len, held, max, o);
        first = 0;
    }
    paf_decoder_free(d);
}

/*
 * Decodes the stream in chunks, in one feed and with the reference decoder,
 * checks they agree and that encoding the boxes gives the stream back.
 * Leaves the outcome of the one-feed decoding in *whole.
 */
static void check_decoding(const uint8_t *stream, size_t n, size_t max, size_t max_chunk,
                           uint64_t seed, struct outcome *whole)
{
    struct outcome chunked = { 0 }, ref = { 0 };
    size_t nlens, bad = 0;
    uint8_t *encoded;
    ssize_t written;

    decode(stream, n, max, max_chunk, seed, &chunked);
    decode(stream, n, max, SIZE_MAX, 0, whole);
    reference(stream, n, max, &ref);

    /* However the stream was cut, the same boxes and the same failure. */
    REQUIRE(chunked.error == ref.error && whole->error == ref.error);
    REQUIRE(ref.error == PAF_DECODE_OK ||
            (chunked.error_at == ref.error_at && whole->error_at == ref.error_at));
    REQUIRE(chunked.nboxes == ref.nboxes && whole->nboxes == ref.nboxes);
    REQUIRE(chunked.consumed == ref.consumed && whole->consumed == ref.consumed);
    REQUIRE(chunked.boxes.len == whole->boxes.len &&
            (whole->boxes.len == 0 ||
             memcmp(chunked.boxes.p, whole->boxes.p, whole->boxes.len) == 0));
    REQUIRE(whole->boxes.len == whole->consumed &&
            (whole->consumed == 0 || memcmp(whole->boxes.p, stream, whole->consumed) == 0));

    /* Encoding the decoded boxes gives back the bytes they came from. */
    nlens = whole->lens.len / sizeof(int32_t);
    REQUIRE(whole->data.len + 2 * nlens == whole->consumed);
    encoded = malloc(whole->consumed + 1);
    REQUIRE(encoded != NULL);
    written = paf_encode(whole->data.p, whole->data.len, (const int32_t *)(void *)whole->lens.p,
                         nlens, encoded, whole->consumed, &bad);
    REQUIRE(written >= 0 && (size_t)written == whole->consumed);
    REQUIRE(written == 0 || memcmp(encoded, stream, whole->consumed) == 0);
    if (whole->consumed > 0) {
        /* One byte short of room is refused, with nothing else wrong. */
        REQUIRE(paf_encode(whole->data.p, whole->data.len, (const int32_t *)(void *)whole->lens.p,
                           nlens, encoded, whole->consumed - 1, &bad) == -PAF_ENCODE_NO_ROOM);
    }
    free(encoded);

    outcome_free(&chunked);
    outcome_free(&ref);
}

/* Caps the keys and values one input asks for (room for a value of the
 * largest size and a little more), to keep executions quick. */
#define ENCODE_DATA_MAX (PAF_AMP_MAX_VALUE_LENGTH + 1024)

/*
 * Reads the stream as paf_encode lengths: a byte under 0xf0 is that length
 * (keys, and the zero that ends a box); 0xf0..0xfb and two bytes, any length
 * a value may have; 0xfc and a byte, a value just too long; 0xfd and a byte,
 * a key just too long or nearly; 0xfe and four bytes, any int32_t at all;
 * 0xff, one byte of data no length accounts for.  Every length that could be
 * valid gets that many bytes of data, drawn from seed.
 */
static void read_lengths(const uint8_t *p, size_t n, uint64_t seed, struct bytes *lens,
                         struct bytes *data)
{
    size_t i = 0;

    while (i < n) {
        uint8_t c = p[i++];
        int64_t len;

        if (c < 0xf0) {
            len = c;
        } else if (c < 0xfc) {
            if (n - i < 2)
                break;
            len = u16_at(p + i);
            i += 2;
        } else if (c == 0xfc) {
            if (n - i < 1)
                break;
            len = (int64_t)PAF_AMP_MAX_VALUE_LENGTH + 1 + p[i++];
        } else if (c == 0xfd) {
            if (n - i < 1)
                break;
            len = (int64_t)PAF_AMP_MAX_KEY_LENGTH - 8 + p[i++];
        } else if (c == 0xfe) {
            if (n - i < 4)
                break;
            len = (int32_t)((uint32_t)p[i] << 24 | (uint32_t)p[i + 1] << 16 |
                            (uint32_t)p[i + 2] << 8 | p[i + 3]);
            i += 4;
        } else {
            uint8_t stray = (uint8_t)next(&seed);

            if (data->len < ENCODE_DATA_MAX)
                put(data, &stray, 1);
            continue;
        }
        if (len >= 0 && len <= PAF_AMP_MAX_VALUE_LENGTH) {
            size_t at = data->len;

            if (at + (size_t)len > ENCODE_DATA_MAX)
                break;
            put(data, NULL, (size_t)len);
            for (size_t j = 0; j < (size_t)len; j += 8) {
                uint64_t word = next(&seed);

                memcpy(data->p + at + j, &word, (size_t)len - j < 8 ? (size_t)len - j : 8);
            }
        }
        {
            int32_t l = (int32_t)len;
            put(lens, &l, sizeof l);
        }
    }
}

/*
 * What ampbox.h says paf_encode must answer: 0, or the error with *bad the
 * entry it names.  Each entry is checked in turn (a negative length, then a
 * key or value too long, then data too short for it), then the layout as a
 * whole.
 */
static int expected_encode(const int32_t *lens, size_t nlens, size_t data_len, size_t *bad)
{
    size_t in = 0;
    int is_key = 1, box_open = 0;

    for (size_t i = 0; i < nlens; i++) {
        *bad = i;
        if (lens[i] < 0)
            return PAF_ENCODE_BAD_LAYOUT;
        if (is_key && lens[i] > PAF_AMP_MAX_KEY_LENGTH)
            return PAF_ENCODE_KEY_TOO_LONG;
        if (!is_key && lens[i] > PAF_AMP_MAX_VALUE_LENGTH)
            return PAF_ENCODE_VALUE_TOO_LONG;
        if ((size_t)lens[i] > data_len - in)
            return PAF_ENCODE_BAD_LAYOUT;
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
    return box_open || in != data_len ? PAF_ENCODE_BAD_LAYOUT : 0;
}

/* Encodes what the stream asks for, then decodes it back. */
static void check_encoding(const uint8_t *stream, size_t n, size_t max, size_t max_chunk,
                           uint64_t seed)
{
    struct bytes lens = { 0 }, data = { 0 };
    struct outcome whole = { 0 };
    size_t nlens, need, bad = SIZE_MAX, expected_bad = SIZE_MAX;
    int expected;
    uint8_t *encoded;
    ssize_t written;

    read_lengths(stream, n, seed, &lens, &data);
    nlens = lens.len / sizeof(int32_t);
    need = data.len + 2 * nlens;
    expected = expected_encode((const int32_t *)(void *)lens.p, nlens, data.len, &expected_bad);

    /* Exactly the room ampbox.h promises is enough, so ASan sees any byte
     * written past it. */
    encoded = malloc(need ? need : 1);
    REQUIRE(encoded != NULL);
    written = paf_encode(data.p, data.len, (const int32_t *)(void *)lens.p, nlens, encoded, need,
                         &bad);
    if (expected != 0) {
        REQUIRE(written == -expected && bad == expected_bad);
        goto out;
    }
    REQUIRE(written >= 0 && (size_t)written == need);

    /* What was encoded decodes to the same keys and values in the same
     * boxes, as far as max_box_size lets it.  Checking a feed costs as much
     * as the bytes held, so a big stream goes in a dozen chunks or so, not
     * byte by byte. */
    if (max_chunk < need / 8)
        max_chunk = need / 8;
    check_decoding(encoded, need, max, max_chunk, seed, &whole);
    REQUIRE(whole.error == PAF_DECODE_OK || whole.error == PAF_DECODE_BOX_TOO_LARGE);
    REQUIRE(whole.data.len <= data.len && whole.lens.len <= lens.len);
    REQUIRE(whole.data.len == 0 || memcmp(whole.data.p, data.p, whole.data.len) == 0);
    REQUIRE(whole.lens.len == 0 || memcmp(whole.lens.p, lens.p, whole.lens.len) == 0);
    if (whole.error == PAF_DECODE_OK)
        REQUIRE(whole.consumed == need && whole.data.len == data.len &&
                whole.lens.len == lens.len);
    outcome_free(&whole);
out:
    free(encoded);
    free(lens.p);
    free(data.p);
}

int LLVMFuzzerTestOneInput(const uint8_t *input, size_t size)
{
    struct outcome whole = { 0 };
    size_t max, max_chunk;
    uint64_t seed;

    if (size < 6)
        return 0;
    max = max_box_sizes[input[0] % COUNT(max_box_sizes)];
    max_chunk = max_chunks[input[1] % COUNT(max_chunks)];
    seed = (uint64_t)input[2] | (uint64_t)input[3] << 8 | (uint64_t)input[4] << 16 |
           (uint64_t)input[5] << 24;

    check_decoding(input + 6, size - 6, max, max_chunk, seed, &whole);
    outcome_free(&whole);
    check_encoding(input + 6, size - 6, max, max_chunk, seed);
    return 0;
}
