#include "common.h"

#include <stdio.h>
#include <stdlib.h>

#define FUZZ_HEADER 6

/* The checks abort, so that libFuzzer keeps the input that broke one. */
void check_box_failed(const char *file, int line, const char *what)
{
    fprintf(stderr, "%s:%d: check failed: %s\n", file, line, what);
    abort();
}

int fuzz_input(const uint8_t *input, size_t size, struct fuzz_input *in)
{
    static const size_t max_box_sizes[] = {
        0, 1, 2, 3, 4, 5, 6, 8, 11, 16, 24, 32, 64, 100, 255, 300, 1000, 4096,
        65540, 65541, 1 << 20, SIZE_MAX,
    };
    static const size_t max_chunks[] = { 1, 2, 3, 4, 7, 16, 64, 256, 1024, SIZE_MAX };

    if (size < FUZZ_HEADER)
        return 0;
    in->max_box_size = max_box_sizes[input[0] % (sizeof max_box_sizes / sizeof max_box_sizes[0])];
    in->max_chunk = max_chunks[input[1] % (sizeof max_chunks / sizeof max_chunks[0])];
    in->seed = (uint64_t)input[2] | (uint64_t)input[3] << 8 | (uint64_t)input[4] << 16 |
               (uint64_t)input[5] << 24;
    in->payload = input + FUZZ_HEADER;
    in->len = size - FUZZ_HEADER;
    return 1;
}

uint64_t fuzz_next(uint64_t *state)
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15ULL);

    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

void decode_in_chunks(const uint8_t *stream, size_t n, size_t max_box_size, size_t max_chunk,
                      uint64_t seed, struct decoded *s)
{
    paf_decoder *d = paf_decoder_new(max_box_size);
    int first = 1;

    BOX_CHECK(d != NULL);
    decoded_init(s, stream, max_box_size);
    while (first || s->fed < n) {
        size_t len = n - s->fed;

        if (max_chunk != SIZE_MAX) {
            size_t want = (size_t)(fuzz_next(&seed) % (max_chunk + 1));

            if (want < len)
                len = want;
        }
        check_feed(d, s, len);
        first = 0;
    }
    paf_decoder_free(d);
}
