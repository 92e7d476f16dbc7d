/*
 * libFuzzer target: the box encoder (csrc/ampbox.c) on any list of lengths.
 *
 * The payload is read as lengths (see read_lengths) with data drawn from the
 * seed.  paf_encode must refuse exactly what ampbox.h says it refuses, at
 * the entry it names, and otherwise write what a plain encoder writes
 * (check_encode, tests/c/check_box.c).  What it wrote is then decoded in
 * chunks, every feed checked: it must give back the same keys and values in
 * the same boxes, as far as max_box_size lets it.  Valid boxes of every
 * shape, and bad lengths, come from here; the decode target rarely makes them.
 */
#include <errno.h>
#include <string.h>

#include "common.h"

/* Caps the data one input asks for (room for a value of the largest size
 * and a little more), to keep executions quick. */
#define ENCODE_DATA_MAX (PAF_AMP_MAX_VALUE_LENGTH + 1024)

/*
 * Reads the payload as paf_encode lengths: a byte under 0xf0 is that length
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
        int32_t l;

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
            uint8_t stray = (uint8_t)fuzz_next(&seed);

            if (data->len < ENCODE_DATA_MAX)
                bytes_put(data, &stray, 1);
            continue;
        }
        if (len >= 0 && len <= PAF_AMP_MAX_VALUE_LENGTH) {
            size_t at = data->len;

            if (at + (size_t)len > ENCODE_DATA_MAX)
                break;
            bytes_put(data, NULL, (size_t)len);
            for (size_t j = 0; j < (size_t)len; j += 8) {
                uint64_t word = fuzz_next(&seed);

                memcpy(data->p + at + j, &word, (size_t)len - j < 8 ? (size_t)len - j : 8);
            }
        }
        l = (int32_t)len;
        bytes_put(lens, &l, sizeof l);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *input, size_t size)
{
    struct fuzz_input in;
    struct bytes lens = { 0 }, data = { 0 }, wire;
    struct decoded s;
    size_t nlens, max_chunk, nboxes = 0;
    int error, is_key = 1;

    if (!fuzz_input(input, size, &in))
        return 0;
    read_lengths(in.payload, in.len, in.seed, &lens, &data);
    nlens = lens.len / sizeof(int32_t);
    wire = check_encode(data.p, data.len, (const int32_t *)(void *)lens.p, nlens, &error);
    if (error)
        goto out;

    /* Checking a feed costs as much as the bytes held, so a big encoding
     * goes in a dozen chunks or so, not byte by byte. */
    max_chunk = in.max_chunk < wire.len / 8 ? wire.len / 8 : in.max_chunk;
    decode_in_chunks(wire.p, wire.len, in.max_box_size, max_chunk, in.seed, &s);

    /* The boxes come back whole and in order, up to a box over the limit. */
    for (size_t i = 0; i < nlens; i++) {
        int32_t len = ((const int32_t *)(void *)lens.p)[i];

        if (is_key && len == 0)
            nboxes++;
        else
            is_key = !is_key;
    }
    BOX_CHECK(s.error == 0 || s.error == EMSGSIZE);
    BOX_CHECK(s.boxes.len == s.consumed);
    BOX_CHECK(s.consumed == 0 || memcmp(s.boxes.p, wire.p, s.consumed) == 0);
    if (s.error == 0)
        BOX_CHECK(s.consumed == wire.len && s.nboxes == nboxes);
    else
        BOX_CHECK(s.nboxes < nboxes);
    decoded_free(&s);
out:
    bytes_free(&wire);
    bytes_free(&lens);
    bytes_free(&data);
    return 0;
}
