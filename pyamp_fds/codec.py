# -*- test-case-name: tests.test_codec -*-
"""
AMP box framing: an incremental L{BoxDecoder} in C, L{encode_boxes} in C
(many boxes in one call) and L{encode_box} in Python (one box costs less
there than a call into C); both byte-identical to
L{twisted.protocols.amp.AmpBox.serialize}.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from itertools import chain, islice, repeat
from struct import Struct, pack, unpack_from
from typing import TYPE_CHECKING

from twisted.protocols.amp import TooLong

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

_uninitialized = ffi.new_allocator(should_clear_after_alloc=False)

# The struct module keeps the last hundred formats it compiled.  The format
# of one ordinary box (a few fields) recurs in steady traffic and is worth
# keeping there; a whole read's is long, hardly ever recurs, and a hundred of
# those would hold megabytes: those are compiled for the one use.
_CACHED_FORMAT_LENGTH = 160


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
        # One struct unpack cuts every key and value out of the source.  The
        # box type's __init__ is skipped: AmpBox's only converts str keys,
        # and these are bytes.
        parts: Iterable[bytes]
        format = ffi.string(lib.paf_decoder_format(decoder))
        if len(format) <= _CACHED_FORMAT_LENGTH:
            parts = unpack_from(format, source)
        else:
            parts = Struct(format).unpack_from(source)
        boxType = self.boxType
        if nboxes == 1:
            pairs = iter(parts)
            box = boxType.__new__(boxType)
            box.update(zip(pairs, pairs))
            return [box]
        # The rest runs in C inside CPython: zip pairs the parts up, key
        # then value, and each box takes its number of pairs from them in
        # wire order, with no Python-level loop.
        parts = iter(parts)
        pairs = zip(parts, parts)
        fields = ffi.unpack(lib.paf_decoder_box_fields(decoder), nboxes)
        boxes = list(map(boxType.__new__, repeat(boxType, nboxes)))
        deque(map(dict.update, boxes, map(islice, repeat(pairs), fields)), 0)
        return boxes

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
    if b"" in box:
        raise ValueError("an AMP key must not be empty: it would end the box")
    # One box in Python, as Twisted does it: for a box this small, getting
    # it to C and back costs more than the work.
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

# Key tuples (as boxes hold them) and their sorted order, for encode_boxes:
# a few dozen command shapes in steady traffic; bounded, since a peer's
# traffic can carry any keys.
_keyOrders: dict[tuple[bytes, ...], list[bytes]] = {}
#: The most key orders L{encode_boxes} keeps.
KEY_ORDERS_KEPT = 256


def key_orders_held() -> int:
    """
    How many key orders L{encode_boxes} keeps now: never more than
    L{KEY_ORDERS_KEPT}, whatever keys the boxes it encoded had.
    """
    return len(_keyOrders)


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
    L{encode_box} of each, made in one C call (one box: L{encode_box}).
    """
    if not isinstance(boxes, (list, tuple)):
        boxes = list(boxes)
    if len(boxes) == 1:
        return encode_box(boxes[0])
    parts: list[bytes] = []
    append = parts.append
    orders = _keyOrders
    for box in boxes:
        # Boxes of one command have the same keys, in the same order: their
        # sorted order is worked out once.
        shape = tuple(box)
        order = orders.get(shape)
        if order is None:
            if b"" in box:
                raise ValueError("an AMP key must not be empty: it would end the box")
            order = sorted(shape)
            if len(orders) >= KEY_ORDERS_KEPT:
                orders.clear()
            orders[shape] = order
        for key in order:
            append(key)
            append(box[key])
        append(b"")
    try:
        data = b"".join(parts)
    except TypeError:
        raise _typeError(parts) from None
    count = len(parts)
    # pack with all the lengths as arguments is faster here than array's
    # conversion of the map (measured: a fifth of the whole encode).
    lens = pack("%di" % (count,), *map(len, parts))
    size = len(data) + 2 * count
    out = _uninitialized("uint8_t[]", size)
    bad = ffi.new("size_t *")
    written = lib.paf_encode(
        data, len(data), ffi.from_buffer("int32_t[]", lens), count, out, size, bad
    )
    if written < 0:
        raise nativeError(ffi.errno, parts=parts, index=bad[0])
    return ffi.buffer(out, written)[:]  # type: ignore[no-any-return]  # cffi: untyped


def _typeError(parts: Sequence[object]) -> TypeError:
    for i, part in enumerate(parts):
        if not isinstance(part, (bytes, bytearray, memoryview)):
            return TypeError(
                "AMP keys and values must be bytes, not %s: %r"
                % (type(part).__name__, part)
            )
    return TypeError("AMP keys and values must be bytes")
