/*
 * What both fuzz targets share.  An input is read the same way by both:
 * byte 0 picks max_box_size, byte 1 the largest chunk fed at once, bytes
 * 2..5 seed the chunk sizes (and the encoder's data); the rest is the
 * payload.  So one corpus serves both.
 */
#ifndef PAF_FUZZ_COMMON_H
#define PAF_FUZZ_COMMON_H

#include <stdint.h>

#include "check_box.h"

struct fuzz_input {
    size_t max_box_size;
    size_t max_chunk;
    uint64_t seed;
    const uint8_t *payload;
    size_t len;
};

/* Reads an input; returns 0 when it is too short to be one. */
int fuzz_input(const uint8_t *input, size_t size, struct fuzz_input *in);

/* The next of a splitmix64 sequence. */
uint64_t fuzz_next(uint64_t *state);

/*
 * Decodes stream[0..n) in chunks of random sizes up to max_chunk (empty ones
 * included; SIZE_MAX: in one feed), every feed checked by check_feed, and
 * leaves what was decoded in *s (decoded_free it).
 */
void decode_in_chunks(const uint8_t *stream, size_t n, size_t max_box_size, size_t max_chunk,
                      uint64_t seed, struct decoded *s);

#endif
