/*
 * Checks of csrc/ampbox.c against an independent reading of the AMP wire
 * format, shared by the C tests (tests/c/test_native.c) and the fuzz targets
 * (fuzz/).  Nothing here calls paf_encode to produce what it compares with:
 * boxes are walked and written byte by byte, as the wire format describes
 * them.
 */
#ifndef PAF_CHECK_BOX_H
#define PAF_CHECK_BOX_H

#include <stddef.h>
#include <stdint.h>

#include "ampbox.h"

/* Called when a check fails; each program says how to fail (it must not return). */
void check_box_failed(const char *file, int line, const char *what);

#define BOX_CHECK(cond) \
    do { \
        if (!(cond)) \
            check_box_failed(__FILE__, __LINE__, #cond); \
    } while (0)

/* A byte string that grows. */
struct bytes {
    uint8_t *p;
    size_t len, cap;
};

/* Appends n bytes from data, or n bytes for the caller to fill when data is NULL. */
void bytes_put(struct bytes *b, const void *data, size_t n);
/* Appends n as a 2-byte big-endian length. */
void bytes_put_u16(struct bytes *b, size_t n);
void bytes_free(struct bytes *b);
unsigned u16_at(const uint8_t *p);

/*
 * A stream being decoded, and everything its decoding reported so far.
 * stream[0..fed) has been fed to the decoder, which started with
 * stream[0]; the caller owns stream and keeps it until the end.
 */
struct decoded {
    const uint8_t *stream;
    size_t max_box_size;
    size_t fed;
    size_t nboxes;
    size_t consumed;    /* stream bytes inside the boxes reported */
    int error;          /* the errno of the failed feed, 0 while none failed */
    size_t error_at;    /* in the stream */
    struct bytes boxes; /* the boxes reported, rebuilt from their keys and values */
};

void decoded_init(struct decoded *s, const uint8_t *stream, size_t max_box_size);
void decoded_free(struct decoded *s);

/*
 * Feeds the next len bytes of s->stream to d and checks its report, as
 * ampbox.h documents it, against a plain reading of the bytes fed: which
 * boxes are complete, the struct format's every key and value, the field
 * counts, the box ends, the bytes held, the error and where it is.  Returns
 * what paf_decoder_feed returned, with errno as it left it.
 */
ssize_t check_feed(paf_decoder *d, struct decoded *s, size_t len);

/*
 * What ampbox.h says paf_encode must answer for these lengths: 0 (accept),
 * or the errno, with *bad the entry it names.
 */
int expected_encode(const int32_t *lens, size_t nlens, size_t data_len, size_t *bad);

/*
 * Runs paf_encode with exactly the room ampbox.h asks for (and with a byte
 * less) and checks it refuses what expected_encode refuses, else writes what
 * a plain encoder writes.  Returns the encoding (caller frees with
 * bytes_free), empty when refused; *error is 0 or the errno.
 */
struct bytes check_encode(const uint8_t *data, size_t data_len, const int32_t *lens,
                          size_t nlens, int *error);

#endif
