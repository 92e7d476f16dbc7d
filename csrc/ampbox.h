/*
 * AMP box framing: incremental decoding and encoding, byte-identical to Twisted.
 *
 * Errors, as in fdio.h: a function that can fail returns -1 (NULL for a
 * pointer) with errno set; the others cannot fail.  The errno values are
 * those listed with each function, and mean the same in both directions:
 *   ENAMETOOLONG  a key over PAF_AMP_MAX_KEY_LENGTH bytes (a length prefix
 *                 over it, when decoding)
 *   EMSGSIZE      a box over the decoder's max_box_size, or a value over
 *                 PAF_AMP_MAX_VALUE_LENGTH bytes to encode
 *   EINVAL        lengths to encode that do not add up, or a box left open
 *   ENOBUFS       an output buffer too small for the encoding
 *   ENOMEM        out of memory
 */
#ifndef PAF_AMPBOX_H
#define PAF_AMPBOX_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define PAF_AMP_MAX_KEY_LENGTH 255
#define PAF_AMP_MAX_VALUE_LENGTH 65535

/*
 * An incremental decoder: bytes go in by paf_decoder_feed, in chunks of any
 * size, and each feed reports the boxes it completed.
 *
 * A feed's report refers to one contiguous source: the input just fed when
 * paf_decoder_from_input says so, otherwise the decoder's own buffer
 * (paf_decoder_held).  paf_decoder_format describes every key and value of
 * the report at once, as a format for Python's struct module unpacked from
 * the source's first byte: "2x<n>s" for each key or value of n bytes (the
 * length prefix skipped), in wire order, keys and values alternating, and
 * "2x" for the end of each box.  Box j has paf_decoder_box_fields(d)[j]
 * key/value pairs and ends at source offset paf_decoder_box_ends(d)[j].
 * Every byte fed and not inside a reported box follows the last box's end
 * in the source (or is the whole source when no box completed): the caller
 * can hand it to another protocol.  The report stays valid until the next
 * feed or reset.
 */
typedef struct paf_decoder paf_decoder;

/* Returns a decoder refusing boxes over max_box_size bytes, or NULL (ENOMEM). */
paf_decoder *paf_decoder_new(size_t max_box_size);
void paf_decoder_free(paf_decoder *d);

/*
 * Feeds len bytes (data may be NULL when len is 0).  Returns the number of
 * boxes completed, or -1 with errno ENAMETOOLONG, EMSGSIZE or ENOMEM; then the
 * boxes completed before the fault are still reported, and the decoder fails
 * every later feed with the same errno until it is reset.
 */
ssize_t paf_decoder_feed(paf_decoder *d, const uint8_t *data, size_t len);

/* The number of boxes the last feed reported. */
size_t paf_decoder_boxes(const paf_decoder *d);

/* Whether the last feed's source is its input (else it is paf_decoder_held). */
int paf_decoder_from_input(const paf_decoder *d);

/* The NUL-terminated struct format of the last feed's boxes ("" for none). */
const char *paf_decoder_format(const paf_decoder *d);

/* Per box of the last feed: its key/value pairs, and its end in the source. */
const size_t *paf_decoder_box_fields(const paf_decoder *d);
const size_t *paf_decoder_box_ends(const paf_decoder *d);

/* After a failed feed: where, in its source, the box or the length prefix
 * at fault starts (at or after the last box reported). */
size_t paf_decoder_error_offset(const paf_decoder *d);

/* The bytes the decoder holds, *len of them: the last feed's source when it
 * is not the input, otherwise the start of a box not yet complete. */
const uint8_t *paf_decoder_held(const paf_decoder *d, size_t *len);

/* Bytes held for a box not yet complete. */
size_t paf_decoder_pending(const paf_decoder *d);

/* Forgets every byte held, the report and any error: the stream now belongs
 * to someone else. */
void paf_decoder_reset(paf_decoder *d);

/*
 * Encodes boxes into out.  data holds every key and value back to back; lens
 * walks them in wire order: keys and values alternate, and a zero length where
 * a key belongs ends the box (as on the wire, so an empty key cannot be
 * encoded: refuse it before).  The output needs exactly
 * data_len + 2 * nlens bytes.  Returns the bytes written, or -1 with errno
 * ENAMETOOLONG, EMSGSIZE, EINVAL (a negative length, lengths past the data or
 * short of it, a box left open) or ENOBUFS, and *bad_index set to the lens
 * entry at fault (nlens when it is the layout as a whole).  Entries are
 * checked in order, each for a negative length, then a key or value too
 * long, then data too short for it, then room.
 */
ssize_t paf_encode(const uint8_t *data, size_t data_len,
                   const int32_t *lens, size_t nlens,
                   uint8_t *out, size_t out_cap, size_t *bad_index);

#endif
