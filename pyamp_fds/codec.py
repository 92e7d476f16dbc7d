# -*- test-case-name: tests.test_codec -*-
"""
AMP box framing: an incremental L{BoxDecoder}, L{encode_box} and
L{encode_boxes}, byte-identical to L{twisted.protocols.amp.AmpBox.serialize}.

The wire is C{pyamp_fds._native}'s (csrc/ampbox.c: scanning, checking and
encoding); the boxes as Python objects are made, and read, by
C{pyamp_fds._boxes} (csrc/python/boxes.c), the one C that touches Python
objects.  A box it does not take (a key or value that is not C{bytes}, one
too long, an empty key, a mapping that is not a C{dict}) is encoded here in
Python, which says exactly what is wrong.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from itertools import chain
from struct import Struct
from typing import TYPE_CHECKING

from twisted.protocols.amp import AmpBox, TooLong

from pyamp_fds import _boxes
from pyamp_fds._native import ffi, lib
from pyamp_fds.errors import nativeError

if TYPE_CHECKING:
    from typing import TypeAlias

    # A decoded box: C{dict} or a subclass of it, such as amp.AmpBox.
    _Box: TypeAlias = dict[bytes, bytes]

__all__ = [
    "MAX_KEY_LENGTH",
    "MAX_VALUE_LENGTH",
    "DEFAULT_MAX_BOX_SIZE",
    "BoxDecoder",
    "check_box",
    "encode_box",
    "encode_boxes",
]

MAX_KEY_LENGTH: int = lib.PAF_AMP_MAX_KEY_LENGTH
MAX_VALUE_LENGTH: int = lib.PAF_AMP_MAX_VALUE_LENGTH

#: Boxes larger than this are refused.  AMP itself sets no bound; 16 MiB is
#: far beyond any box Twisted's own commands produce, and keeps a peer that
#: never ends a box from growing our memory without limit.
DEFAULT_MAX_BOX_SIZE = 16 * 1024 * 1024


class BoxDecoder:
    """
    Turns a byte stream, in chunks of any size, into AMP boxes.

    @ivar boxType: the type of the boxes made: C{dict} (the default) or a
        subclass of it whose C{__init__} does nothing more for C{bytes} keys,
        such as L{twisted.protocols.amp.AmpBox}.  Keys and values are set in wire order.
    """

    def __init__(self, boxType: type[_Box] = dict, max_box_size: int = DEFAULT_MAX_BOX_SIZE) -> None:
        decoder = lib.paf_decoder_new(max_box_size)
        if decoder == ffi.NULL:
            raise nativeError(ffi.errno, boxes=())
        self._decoder = ffi.gc(decoder, lib.paf_decoder_free)
        self.boxType = boxType
        self._source = b""
        self._heldLength = ffi.new("size_t *")

    def feed(self, data: bytes | bytearray | memoryview) -> list[_Box]:
        """
        Add C{data} to the stream.

        @return: the boxes completed by it, in order (possibly none).
        @raise pyamp_fds.errors.FramingError: the stream is not AMP
            (L{pyamp_fds.errors.KeyTooLong}, L{pyamp_fds.errors.BoxTooLarge});
            the boxes completed before the fault are in the exception's
            C{boxes}.  The decoder accepts nothing more after it.
        """
        decoder = self._decoder
        if type(data) is not bytes:
            data = bytes(data)
        nboxes = lib.paf_decoder_feed(decoder, data, len(data))
        if nboxes > 0:
            return self._build(data, nboxes)
        if nboxes == 0:
            return []
        # Read errno before any other call into C.
        code = ffi.errno
        nboxes = lib.paf_decoder_boxes(decoder)
        boxes = self._build(data, nboxes) if nboxes else []
        raise nativeError(code, boxes, lib.paf_decoder_error_offset(decoder))

    def _build(self, data: bytes, nboxes: int) -> list[_Box]:
        # Only when boxes completed: copying held bytes on every feed of a
        # large box, arriving in small pieces, would be quadratic.
        decoder = self._decoder
        if lib.paf_decoder_from_input(decoder):
            source = self._source = data
        else:
            held = lib.paf_decoder_held(decoder, self._heldLength)
            source = self._source = ffi.buffer(held, self._heldLength[0])[:]
        return _boxes.build(self.boxType, source, nboxes)

    def _held(self) -> bytes:
        # A copy of every byte the C decoder holds.
        pointer = lib.paf_decoder_held(self._decoder, self._heldLength)
        length = self._heldLength[0]
        return ffi.buffer(pointer, length)[:] if length else b""

    def remainder(self, index: int) -> bytes:
        """
        Every byte fed after box C{index} of the last L{feed}, and forget
        them: the stream after that box belongs to someone else now (AMP's
        protocol switching).  The decoder starts afresh.

        This works after a L{pyamp_fds.errors.FramingError} too, for the boxes in it: bytes
        meant for the next protocol are usually not AMP.
        """
        decoder = self._decoder
        nboxes = lib.paf_decoder_boxes(decoder)
        if not 0 <= index < nboxes:
            raise IndexError("the last feed completed %d boxes" % (nboxes,))
        rest = self._source[lib.paf_decoder_box_ends(decoder)[index] :]
        lib.paf_decoder_reset(decoder)
        self._source = b""
        return rest

    def takePending(self) -> bytes:
        """
        Every byte held after the last box of the last L{feed}, and forget
        them: the decoder starts afresh.
        """
        decoder = self._decoder
        nboxes = lib.paf_decoder_boxes(decoder)
        if nboxes:
            return self.remainder(nboxes - 1)
        rest = self._held()
        lib.paf_decoder_reset(decoder)
        return rest

    @property
    def pending(self) -> int:
        """
        The number of bytes held for a box not yet complete.
        """
        return lib.paf_decoder_pending(self._decoder)  # type: ignore[no-any-return]  # cffi: untyped

    def close(self) -> None:
        """
        Free the C decoder now rather than when it is garbage collected.
        """
        decoder, self._decoder = self._decoder, None
        if decoder is not None:
            ffi.release(decoder)


def encode_box(box: Mapping[bytes, bytes]) -> bytes:
    """
    Encode one box (a mapping of C{bytes} to C{bytes}) exactly as
    L{twisted.protocols.amp.AmpBox.serialize} does: keys sorted, each key and value with a
    2-byte big-endian length, two zero bytes at the end.

    @raise twisted.protocols.amp.TooLong: a key over 255 bytes or a value over 65535, with the
        arguments Twisted gives it.
    @raise TypeError: a key or value that is not bytes.
    @raise ValueError: an empty key (it would end the box early on the wire).
    """
    data = _boxes.encode((box,), AmpBox)
    if data is None:
        data = _encodeInPython(box)
    return data


def _encodeInPython(box: Mapping[bytes, bytes]) -> bytes:
    # A box pyamp_fds._boxes does not take: what it holds is checked, and
    # the error is exactly Twisted's, or it is encoded (bytes-like values).
    if b"" in box:
        raise ValueError("an AMP key must not be empty: it would end the box")
    parts: list[bytes] = []
    append = parts.append
    try:
        for key in sorted(box):
            value = box[key]
            if len(key) > MAX_KEY_LENGTH:
                raise TooLong(True, True, key, None)
            if len(value) > MAX_VALUE_LENGTH:
                raise TooLong(False, True, value, key)
            append(_LENGTH(len(key)))
            append(key)
            append(_LENGTH(len(value)))
            append(value)
        append(b"\0\0")
        return b"".join(parts)
    except TypeError:
        raise _typeError(list(chain.from_iterable(box.items()))) from None


_LENGTH = Struct(">H").pack


#: The most keys L{BoxDecoder}s keep to hand out again (one bytes object for
#: a key that recurs, not one per box), and the longest key kept.
KEYS_KEPT: int = _boxes.KEYS_KEPT
KEY_KEPT_MAX: int = _boxes.KEY_KEPT_MAX


def keys_held() -> int:
    """
    How many keys L{BoxDecoder}s keep now: never more than C{KEYS_KEPT},
    whatever keys the boxes they decoded had.
    """
    return _boxes.keys_held()


def check_box(box: Mapping[bytes, bytes]) -> None:
    """
    Raise what L{encode_box} would raise for C{box}, without encoding it:
    a box queued for encoding later must fail when it is sent.
    """
    for key, value in box.items():
        if (
            type(key) is not bytes
            or type(value) is not bytes
            or not 0 < len(key) <= MAX_KEY_LENGTH
            or len(value) > MAX_VALUE_LENGTH
        ):
            # The encoder knows the exact error; a bytes-like value is fine.
            encode_box(box)
            return


def encode_boxes(boxes: Iterable[Mapping[bytes, bytes]]) -> bytes:
    """
    Encode several boxes into one C{bytes}: the concatenation of
    L{encode_box} of each, made in one C call when C{pyamp_fds._boxes}
    takes them all.
    """
    if not isinstance(boxes, (list, tuple)):
        boxes = list(boxes)
    data = _boxes.encode(boxes, AmpBox)
    if data is None:
        data = b"".join(map(encode_box, boxes))
    return data


def _typeError(parts: Sequence[object]) -> TypeError:
    for i, part in enumerate(parts):
        if not isinstance(part, (bytes, bytearray, memoryview)):
            return TypeError(
                "AMP keys and values must be bytes, not %s: %r"
                % (type(part).__name__, part)
            )
    return TypeError("AMP keys and values must be bytes")
