/*
 * libFuzzer target: the box decoder (csrc/ampbox.c) on any stream.
 *
 * The payload is decoded in chunks and in one feed; every feed's report is
 * checked against a plain reading of the bytes (tests/c/check_box.c), and
 * both decodings must agree: the same boxes, the same fault at the same
 * place, and the boxes' keys and values, rebuilt, the very bytes they were
 * decoded from.
 */
#include <string.h>

#include "common.h"

int LLVMFuzzerTestOneInput(const uint8_t *input, size_t size)
{
    struct fuzz_input in;
    struct decoded chunked, whole;

    if (!fuzz_input(input, size, &in))
        return 0;
    decode_in_chunks(in.payload, in.len, in.max_box_size, in.max_chunk, in.seed, &chunked);
    decode_in_chunks(in.payload, in.len, in.max_box_size, SIZE_MAX, 0, &whole);

    /* However the stream was cut, the same boxes and the same fault. */
    BOX_CHECK(chunked.error == whole.error);
    BOX_CHECK(whole.error == 0 || chunked.error_at == whole.error_at);
    BOX_CHECK(chunked.nboxes == whole.nboxes && chunked.consumed == whole.consumed);
    BOX_CHECK(chunked.boxes.len == whole.boxes.len);
    BOX_CHECK(whole.boxes.len == 0 ||
              memcmp(chunked.boxes.p, whole.boxes.p, whole.boxes.len) == 0);
    BOX_CHECK(whole.boxes.len == whole.consumed);
    BOX_CHECK(whole.consumed == 0 || memcmp(whole.boxes.p, in.payload, whole.consumed) == 0);

    decoded_free(&chunked);
    decoded_free(&whole);
    return 0;
}
