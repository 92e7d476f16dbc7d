"""
Tests for L{pyamp_fds.codec}: parity with Twisted's own AMP framing.
"""

import collections

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.testing import StringTransport
from twisted.protocols import amp

from pyamp_fds.codec import BoxDecoder, encode_box, encode_boxes
from pyamp_fds.errors import BoxTooLarge, FramingError, KeyTooLong

keys = st.binary(min_size=1, max_size=255)
# Large values repeat a short random pattern: drawing 64 KiB at random is slow.
largeValues = st.tuples(st.integers(65000, 65535), st.binary(min_size=1, max_size=8)).map(
    lambda sizeAndPattern: (sizeAndPattern[1] * 65535)[: sizeAndPattern[0]]
)
values = st.one_of(st.binary(max_size=200), largeValues)
boxes = st.dictionaries(keys, st.binary(max_size=200), max_size=8)
bigBoxes = st.dictionaries(keys, values, max_size=3)
boxLists = st.lists(st.one_of(boxes, bigBoxes), max_size=12)


def serialize(boxList):
    return b"".join(amp.AmpBox(box).serialize() for box in boxList)


def chunked(data, sizes, most=2000):
    """
    Cut C{data} into pieces of the given sizes (cycled), the last one
    whatever is left; sizes are scaled up where they would make more than
    C{most} pieces.
    """
    pieces, at, i = [], 0, 0
    scale = 1
    if sizes:
        scale = max(1, len(data) * len(sizes) // (most * sum(sizes)))
    while at < len(data):
        size = max(1, sizes[i % len(sizes)] * scale) if sizes else len(data)
        pieces.append(data[at : at + size])
        at += size
        i += 1
    return pieces


class _Collector:
    def __init__(self):
        self.boxes = []

    def startReceivingBoxes(self, sender):
        pass

    def ampBoxReceived(self, box):
        self.boxes.append(box)

    def stopReceivingBoxes(self, reason):
        pass


def twistedDecode(pieces):
    collector = _Collector()
    protocol = amp.BinaryBoxProtocol(collector)
    protocol.makeConnection(StringTransport())
    for piece in pieces:
        protocol.dataReceived(piece)
    return collector.boxes


def decodeAll(pieces, **kwargs):
    decoder = BoxDecoder(**kwargs)
    found = []
    for piece in pieces:
        found.extend(decoder.feed(piece))
    return found, decoder


class TestEncode:
    @given(boxes)
    def test_sameAsTwisted(self, box):
        """
        L{encode_box} is byte-identical to L{amp.AmpBox.serialize}.
        """
        assert encode_box(box) == amp.AmpBox(box).serialize()

    @given(st.dictionaries(st.binary(min_size=1, max_size=3), st.binary(max_size=4), min_size=17, max_size=80))
    def test_manyKeysSameAsTwisted(self, box):
        """
        A box of more keys than a handful, some keys the start of others, is
        byte-identical to L{amp.AmpBox.serialize} too.
        """
        assert encode_box(box) == amp.AmpBox(box).serialize()

    @given(boxLists)
    @settings(max_examples=50)
    def test_manySameAsTwisted(self, boxList):
        """
        L{encode_boxes} is the concatenation of each box's serialization.
        """
        assert encode_boxes(boxList) == serialize(boxList)

    def test_anyIterable(self):
        """
        L{encode_boxes} takes any iterable of boxes, one box included.
        """
        boxes = [{b"a": b"1"}, {b"b": b"2"}]
        assert encode_boxes(iter(boxes)) == serialize(boxes)
        assert encode_boxes(iter(boxes[:1])) == serialize(boxes[:1])

    def test_manyShapes(self):
        """
        Boxes of many different key sets encode as Twisted does and decode
        back, and the keys the decoder keeps to hand out again stay bounded.
        """
        from pyamp_fds import codec

        boxes = [{b"k%d" % i: b"v", b"a%d" % i: b"w"} for i in range(3 * codec.KEYS_KEPT)]
        decoder = BoxDecoder()
        for i in range(0, len(boxes), 2):
            assert encode_boxes(boxes[i : i + 2]) == serialize(boxes[i : i + 2])
            assert decoder.feed(serialize(boxes[i : i + 2])) == boxes[i : i + 2]
        assert 0 < codec.keys_held() <= codec.KEYS_KEPT

    def test_empty(self):
        """
        An empty box is two zero bytes; no boxes at all is nothing.
        """
        assert encode_box({}) == b"\x00\x00"
        assert encode_boxes([]) == b""

    def test_bytesLike(self):
        """
        Values may be any bytes-like object, as in Twisted's C{join}.
        """
        assert encode_box({b"k": bytearray(b"v")}) == b"\x00\x01k\x00\x01v\x00\x00"

    def test_bytesLikeAmongMany(self):
        """
        Boxes encoded together, some of whose values are bytes-like and some
        of whose types are other mappings, encode as each would alone, in
        order.
        """
        boxes = [
            amp.AmpBox({b"_ask": b"1", b"_command": b"A"}),
            {b"k": bytearray(b"v"), b"a": b"w"},
            collections.OrderedDict([(b"z", b"1"), (b"b", memoryview(b"2"))]),
            {b"_answer": b"2"},
        ]
        assert encode_boxes(boxes) == b"".join(map(encode_box, boxes))
        assert encode_boxes(boxes) == serialize(
            [{k: bytes(v) for k, v in box.items()} for box in boxes]
        )

    def test_longestKeyAndValue(self):
        """
        A 255-byte key and a 65535-byte value are the longest allowed.
        """
        box = {b"k" * 255: b"v" * 65535}
        assert encode_box(box) == amp.AmpBox(box).serialize()

    def test_keyTooLong(self):
        """
        A 256-byte key raises Twisted's C{TooLong} with Twisted's arguments.
        """
        key = b"k" * 256
        with pytest.raises(amp.TooLong) as caught:
            encode_box({key: b"v"})
        error = caught.value
        assert (error.isKey, error.isLocal, error.value, error.keyName) == (True, True, key, None)

    def test_valueTooLong(self):
        """
        A 65536-byte value raises Twisted's C{TooLong}, naming its key.
        """
        with pytest.raises(amp.TooLong) as caught:
            encode_boxes([{b"fine": b"x"}, {b"a": b"", b"big": b"v" * 65536}])
        error = caught.value
        assert (error.isKey, error.isLocal, error.keyName, len(error.value)) == (
            False,
            True,
            b"big",
            65536,
        )

    @pytest.mark.parametrize(
        "box", [{"str": b"v"}, {b"k": "str"}, {b"k": 1}, {b"a": b"", b"k": None}]
    )
    def test_notBytes(self, box):
        """
        A key or value that is not bytes raises a C{TypeError} naming it.
        """
        with pytest.raises(TypeError, match="must be bytes"):
            encode_box(box)

    def test_emptyKey(self):
        """
        An empty key would end the box early: it is a C{ValueError}.
        """
        with pytest.raises(ValueError, match="empty"):
            encode_boxes([{b"a": b"1"}, {b"": b"x"}])

    def test_manyKeysInReverseOrder(self):
        """
        A box of many keys in reverse order is encoded as Twisted encodes
        it, the keys sorted (past 16 keys by C{qsort}: a box a peer sent may
        be sent on, and moving each key one place at a time would take
        quadratic time).
        """
        inOrder = {b"%08d" % i: b"" for i in range(20000)}
        reverseOrder = dict(reversed(inOrder.items()))
        assert encode_box(reverseOrder) == encode_box(inOrder) == amp.AmpBox(inOrder).serialize()


class TestDecode:
    @given(boxLists, st.lists(st.integers(1, 70000), max_size=8))
    @settings(max_examples=100)
    def test_sameAsTwisted(self, boxList, sizes):
        """
        Any stream of boxes, cut anywhere, decodes to what Twisted's
        L{amp.BinaryBoxProtocol} makes of it, in the same order and type.
        """
        data = serialize(boxList)
        expected = twistedDecode([data])
        found, decoder = decodeAll(chunked(data, sizes), boxType=amp.AmpBox)
        assert found == expected == boxList
        assert all(type(box) is amp.AmpBox for box in found)
        assert decoder.pending == 0

    def test_byteByByte(self):
        """
        Feeding one byte at a time gives every box, each as soon as its last
        byte arrives.
        """
        boxList = [{b"_ask": b"1", b"_command": b"Hello"}, {}, {b"k" * 255: b"v" * 1000}]
        data = serialize(boxList)
        decoder = BoxDecoder()
        found, completedAt = [], []
        for i in range(len(data)):
            got = decoder.feed(data[i : i + 1])
            found.extend(got)
            if got:
                completedAt.append(i + 1)
        assert found == boxList
        ends, at = [], 0
        for box in boxList:
            at += len(encode_box(box))
            ends.append(at)
        assert completedAt == ends

    def test_manyInOneFeed(self):
        """
        One feed returns every complete box in it and keeps the partial one.
        """
        data = serialize([{b"a": b"1"}, {b"b": b"2"}, {b"c": b"3"}])
        decoder = BoxDecoder()
        assert decoder.feed(data[:-3]) == [{b"a": b"1"}, {b"b": b"2"}]
        assert decoder.pending == len(encode_box({b"c": b"3"})) - 3
        assert decoder.feed(data[-3:]) == [{b"c": b"3"}]
        assert decoder.pending == 0

    def test_duplicateKeys(self):
        """
        A key repeated in one box keeps its last value, as in Twisted.
        """
        data = b"\x00\x01k\x00\x011\x00\x01k\x00\x012\x00\x00"
        found, _ = decodeAll([data])
        assert found == twistedDecode([data]) == [{b"k": b"2"}]

    def test_boxType(self):
        """
        Boxes are plain dicts unless asked otherwise.
        """
        found, _ = decodeAll([encode_box({b"k": b"v"})])
        assert type(found[0]) is dict

    def test_bytesLikeInput(self):
        """
        Any bytes-like input is accepted; keys and values come out as bytes.
        """
        data = encode_box({b"k": b"v"})
        found, _ = decodeAll([bytearray(data[:3]), memoryview(data[3:])])
        assert found == [{b"k": b"v"}]
        assert all(type(k) is bytes and type(v) is bytes for k, v in found[0].items())


class TestFramingErrors:
    def test_keyTooLong(self):
        """
        A key length prefix over 255 is L{KeyTooLong}; the boxes completed
        before it in the same feed are in the exception.
        """
        good = encode_box({b"a": b"1"})
        decoder = BoxDecoder()
        with pytest.raises(KeyTooLong) as caught:
            decoder.feed(good + good + b"\x01\x00" + b"k" * 256)
        assert caught.value.boxes == [{b"a": b"1"}] * 2
        assert isinstance(caught.value, FramingError)

    def test_keyTooLongAsSoonAsSeen(self):
        """
        The prefix alone is enough: the error comes before the key's bytes.
        """
        decoder = BoxDecoder()
        decoder.feed(b"\x01")
        with pytest.raises(KeyTooLong):
            decoder.feed(b"\x00")

    def test_keyTooLongLaterField(self):
        """
        An oversized key after valid fields of a partial box is found too,
        and Twisted agrees the stream is bad.
        """
        data = b"\x00\x01a\x00\x01b" + b"\x01\x00"
        decoder = BoxDecoder()
        decoder.feed(data[:4])
        with pytest.raises(KeyTooLong) as caught:
            decoder.feed(data[4:])
        assert caught.value.boxes == []
        protocol = amp.BinaryBoxProtocol(_Collector())
        transport = StringTransport()
        protocol.makeConnection(transport)
        protocol.dataReceived(data)
        assert transport.disconnecting

    def test_offset(self):
        """
        The error's C{offset} counts from the first byte not inside a box
        reported by an earlier feed: boxes of the failing feed count in it.
        """
        good = encode_box({b"a": b"1"})
        decoder = BoxDecoder()
        with pytest.raises(KeyTooLong) as caught:
            decoder.feed(good + good + b"\x01\x00")
        assert caught.value.offset == 2 * len(good)

        decoder = BoxDecoder()
        assert decoder.feed(good + b"\x00\x01a\x00") == [{b"a": b"1"}]
        with pytest.raises(KeyTooLong) as caught:
            decoder.feed(b"\x01b\x01\x00")
        assert caught.value.offset == 6

        decoder = BoxDecoder(max_box_size=20)
        with pytest.raises(BoxTooLarge) as caught:
            decoder.feed(good + b"\x00\x01k\x00\x20")
        assert caught.value.offset == len(good)
        assert caught.value.boxes == [{b"a": b"1"}]

    def test_failedStaysFailed(self):
        """
        After a framing error the decoder refuses everything.
        """
        decoder = BoxDecoder()
        with pytest.raises(KeyTooLong):
            decoder.feed(b"\x01\x00")
        with pytest.raises(KeyTooLong):
            decoder.feed(encode_box({b"a": b"1"}))

    def test_boxTooLarge(self):
        """
        A complete box over C{max_box_size} is L{BoxTooLarge}.
        """
        decoder = BoxDecoder(max_box_size=100)
        assert decoder.feed(encode_box({b"k": b"v" * 90})) == [{b"k": b"v" * 90}]
        with pytest.raises(BoxTooLarge):
            decoder.feed(encode_box({b"k": b"v" * 100}))

    def test_boxTooLargeRefusedEarly(self):
        """
        A box whose value length already takes it over the limit is refused
        from its header, before the value is buffered.
        """
        decoder = BoxDecoder(max_box_size=1000)
        with pytest.raises(BoxTooLarge):
            decoder.feed(b"\x00\x01k\xff\xff")

    def test_neverEndingBox(self):
        """
        A box that never ends, fed in small pieces, is refused once it
        passes the limit: memory stays bounded.
        """
        decoder = BoxDecoder(max_box_size=10000)
        field = b"\x00\x01k\x00\x05value"
        with pytest.raises(BoxTooLarge):
            for _ in range(10000):
                decoder.feed(field)
        assert decoder.pending <= 10000 + len(field)


class TestRemainder:
    def test_afterBox(self):
        """
        L{BoxDecoder.remainder} gives every byte after a box, complete boxes
        and partial ones alike, and the decoder starts afresh.
        """
        first = encode_box({b"switch": b"1"})
        rest = encode_box({b"b": b"2"}) + b"\x00\x05par"
        decoder = BoxDecoder()
        found = decoder.feed(first + rest)
        assert found == [{b"switch": b"1"}, {b"b": b"2"}]
        assert decoder.remainder(0) == rest
        assert decoder.pending == 0
        assert decoder.feed(encode_box({b"c": b"3"})) == [{b"c": b"3"}]

    def test_afterFramingError(self):
        """
        Bytes for the next protocol are rarely AMP: the remainder after a box
        reported in a L{FramingError} is still there, and the error is
        forgotten with it.
        """
        first = encode_box({b"switch": b"1"})
        rest = b"raw protocol bytes"
        decoder = BoxDecoder()
        with pytest.raises(KeyTooLong) as caught:
            decoder.feed(first + rest)
        assert caught.value.boxes == [{b"switch": b"1"}]
        assert decoder.remainder(0) == rest
        assert decoder.feed(encode_box({b"c": b"3"})) == [{b"c": b"3"}]

    def test_afterBufferedBox(self):
        """
        The remainder is right when the box was completed from held bytes.
        """
        data = encode_box({b"switch": b"1"}) + b"\x00"
        decoder = BoxDecoder()
        assert decoder.feed(data[:5]) == []
        assert decoder.feed(data[5:]) == [{b"switch": b"1"}]
        assert decoder.remainder(0) == b"\x00"

    def test_badIndex(self):
        """
        Asking past the boxes of the last feed is an C{IndexError}.
        """
        decoder = BoxDecoder()
        decoder.feed(encode_box({}))
        with pytest.raises(IndexError):
            decoder.remainder(1)


class TestTakePending:
    def test_nothingFed(self):
        """
        Before any byte, nothing is held.
        """
        decoder = BoxDecoder()
        assert decoder.takePending() == b""
        assert decoder.pending == 0

    def test_partialBox(self):
        """
        The bytes of a box not yet complete, held from one feed or several,
        are given back, and the decoder starts afresh.
        """
        data = encode_box({b"key": b"value"})
        decoder = BoxDecoder()
        assert decoder.feed(data[:4]) == []
        assert decoder.takePending() == data[:4]
        assert decoder.pending == 0
        assert decoder.feed(data[:3]) == []
        assert decoder.feed(data[3:7]) == []
        assert decoder.takePending() == data[:7]
        assert decoder.feed(data) == [{b"key": b"value"}]

    def test_afterBoxes(self):
        """
        After boxes, the bytes that follow the last of them.
        """
        box = encode_box({b"k": b"v"})
        decoder = BoxDecoder()
        assert decoder.feed(box + box + b"\x00\x02") == [{b"k": b"v"}] * 2
        assert decoder.takePending() == b"\x00\x02"
        assert decoder.feed(box[:3]) == []
        assert decoder.feed(box[3:] + b"\x00") == [{b"k": b"v"}]
        assert decoder.takePending() == b"\x00"
        assert decoder.takePending() == b""


def test_close():
    """
    L{BoxDecoder.close} frees the decoder at once, and twice is harmless.
    """
    decoder = BoxDecoder()
    decoder.close()
    decoder.close()


class TestBoxObjects:
    """
    C{pyamp_fds._boxes}, which makes the decoder's boxes and encodes boxes
    as Python objects, checks what it is given rather than trusting it.
    """

    def test_sourceEndsEarly(self):
        """
        A source that ends inside a box it is asked to build is refused with
        a C{ValueError}, not read past: at every cut of a box.
        """
        from pyamp_fds import _boxes

        data = serialize([{b"_command": b"Take", b"fd": b"12"}])
        for cut in range(len(data)):
            with pytest.raises(ValueError):
                _boxes.build(dict, data[:cut], 1)
        assert _boxes.build(dict, data, 1) == [{b"_command": b"Take", b"fd": b"12"}]

    @given(st.binary(max_size=300), st.integers(min_value=0, max_value=6))
    @settings(max_examples=300)
    def test_anySource(self, source, count):
        """
        Whatever the source and the count, the boxes are built or a
        C{ValueError} says the source ran short: the lengths in it are
        checked against its end (run under the sanitizers by C{make
        sanitize}).
        """
        from pyamp_fds import _boxes

        try:
            boxes = _boxes.build(amp.AmpBox, source, count)
        except ValueError:
            return
        assert len(boxes) == count
        assert all(type(box) is amp.AmpBox for box in boxes)

    def test_countPastSource(self):
        """
        A count of more boxes than the source could hold (each takes two
        bytes at least) is the same C{ValueError} as any other that runs past
        it, not a list of that many places allocated first.
        """
        import sys

        from pyamp_fds import _boxes

        for count in (2, 2**40, sys.maxsize):
            with pytest.raises(ValueError):
                _boxes.build(dict, b"\x00\x00", count)

    def test_notABoxType(self):
        """
        Boxes can only be made of C{dict} or a subclass of it.
        """
        from pyamp_fds import _boxes

        with pytest.raises(TypeError):
            _boxes.build(list, serialize([{b"a": b"1"}]), 1)
        with pytest.raises(TypeError):
            _boxes.build(dict, bytearray(serialize([{b"a": b"1"}])), 1)

    @pytest.mark.parametrize(
        "box",
        [
            {b"k": bytearray(b"v")},
            {b"": b"v"},
            {b"k" * 256: b"v"},
            {b"k": b"v" * 65536},
            {"k": b"v"},
            collections.OrderedDict({b"k": b"v"}),
        ],
        ids=["bytesLike", "emptyKey", "keyTooLong", "valueTooLong", "strKey", "otherMapping"],
    )
    def test_leftToPython(self, box):
        """
        A box the C encoder does not take is left to Python (C{None}), which
        encodes it or says what is wrong, as L{encode_box} always did.
        """
        from pyamp_fds import _boxes

        assert _boxes.encode([{b"a": b"1"}, box], amp.AmpBox) is None

    def test_noObjectLeft(self):
        """
        Building and encoding boxes over and over holds on to nothing: the
        memory Python allocates stays where it was.
        """
        import tracemalloc

        boxes = [amp.AmpBox({b"_command": b"Take", b"_ask": b"%x" % i, b"fd": b"%d" % i}) for i in range(64)]
        data = encode_boxes(boxes)
        decoder = BoxDecoder(amp.AmpBox)

        def churn():
            for _ in range(200):
                assert encode_boxes(decoder.feed(data)) == data

        churn()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            churn()
            after = tracemalloc.get_traced_memory()[0]
        finally:
            tracemalloc.stop()
        # 12,800 boxes went through: a leak of even one object each would
        # show as hundreds of kilobytes.
        assert after - before < 64 * 1024
