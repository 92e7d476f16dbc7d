/* AMP box framing: incremental decoding and encoding, byte-identical to Twisted. */
#ifndef PAF_AMPBOX_H
#define PAF_AMPBOX_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define PAF_AMP_MAX_KEY_LENGTH 255
#define PAF_AMP_MAX_VALUE_LENGTH 65535

/* Decoder errors (paf_decoder.error); once set, the decoder stays failed. */
#define PAF_DECODE_OK 0
#define PAF_DECODE_KEY_TOO_LONG 1  /* a key length prefix over 255 */
#define PAF_DECODE_BOX_TOO_LARGE 2 /* a box longer than max_box_size */
#define PAF_DECODE_NO_MEMORY 3

/* Encoder errors (returned negated by paf_encode). */
#define PAF_ENCODE_KEY_TOO_LONG 1
#define PAF_ENCODE_VALUE_TOO_LONG 2
#define PAF_ENCODE_BAD_LAYOUT 3 /* lengths that do not add up, or a box left open */
#define PAF_ENCODE_NO_ROOM 4

/*
 * After paf_decoder_feed, the complete boxes it found are described by the
 * public fields below.  Every offset refers to one contiguous source: the
 * input just fed when from_input is set, otherwise buf[0..len).  Part i
 * (keys and values alternating, in wire order) is source[starts[i]..ends[i]);
 * box j has box_fields[j] key/value pairs and ends at box_ends[j].  Every byte
 * fed and not yet inside a reported box is source[box_ends[nboxes-1]..] (or
 * the whole source when no box completed): the caller can hand it to another
 * protocol.  format (format_len bytes, NUL-terminated) is a format for
 * Python's struct module that, unpacked from the source's first byte, gives
 * every part in order.  The reported spans stay valid until the next feed.
 */
typedef struct paf_decoder {
    size_t *starts;
    size_t *ends;
    size_t nparts;
    char *format;       /* a struct-module format that unpacks every part at once */
    size_t format_len;
    size_t *box_fields;
    size_t *box_ends;
    size_t nboxes;
    int from_input;
    int error;
    size_t error_offset; /* in the source, where the offending length prefix starts */

    /* private */
    uint8_t *buf;       /* bytes of the partial box, from its first byte */
    size_t len;         /* bytes in buf (all of them belong to the source while !from_input) */
    size_t cap;
    size_t consumed;    /* leading bytes of buf that the last feed reported in boxes */
    size_t scan;        /* offset in buf of the next field header not yet checked */
    size_t max_box_size;
    size_t parts_cap;
    size_t boxes_cap;
    size_t format_cap;
} paf_decoder;

/* Returns a decoder refusing boxes over max_box_size bytes, or NULL (ENOMEM). */
paf_decoder *paf_decoder_new(size_t max_box_size);
void paf_decoder_free(paf_decoder *d);

/* Feeds len bytes; returns 0, or the PAF_DECODE_* error (the boxes completed
 * before the error are still reported). */
int paf_decoder_feed(paf_decoder *d, const uint8_t *data, size_t len);

/* Bytes held for a box not yet complete. */
size_t paf_decoder_pending(const paf_decoder *d);

/* Forgets every byte held and any error: the stream now belongs to someone else. */
void paf_decoder_reset(paf_decoder *d);

/*
 * Encodes boxes into out.  data holds every key and value back to back; lens
 * walks them in wire order: keys and values alternate, and a zero length where
 * a key belongs ends the box (as on the wire, so an empty key cannot be
 * encoded: refuse it before).  The output needs exactly
 * data_len + 2 * nlens bytes.  Returns the bytes written or, for bad
 * input, -PAF_ENCODE_* with *bad_index set to the offending lens entry.
 */
ssize_t paf_encode(const uint8_t *data, size_t data_len,
                   const int32_t *lens, size_t nlens,
                   uint8_t *out, size_t out_cap, size_t *bad_index);

#endif
