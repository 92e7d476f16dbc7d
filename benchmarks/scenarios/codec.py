"""
AMP box framing: pyamp_fds's C codec against Twisted's own.
"""

import time

from twisted.internet.testing import StringTransport
from twisted.protocols import amp

from benchmarks.harness import Scenario, Target
from pyamp_fds.codec import BoxDecoder, encode_box, encode_boxes

CHUNK = 65536


def typicalBoxes(count):
    """
    Command boxes as AMP traffic carries them: a tag, a command name and a
    few arguments of realistic sizes, one of them a descriptor ordinal.
    """
    return [
        amp.AmpBox(
            {
                b"_ask": b"%x" % i,
                b"_command": b"PassDescriptor",
                b"fd": b"%d" % i,
                b"worker": b"worker-%d" % (i % 16),
                b"peer": b"10.1.%d.%d:%d" % (i % 256, i % 200, 40000 + i % 20000),
            }
        )
        for i in range(count)
    ]


BOXES = typicalBoxes(20000)
STREAM = b"".join(box.serialize() for box in BOXES)
CHUNKS = [STREAM[i : i + CHUNK] for i in range(0, len(STREAM), CHUNK)]


class _Counter:
    count = 0

    def startReceivingBoxes(self, sender):
        pass

    def ampBoxReceived(self, box):
        self.count += 1

    def stopReceivingBoxes(self, reason):
        pass


def decodeTwisted(param):
    counter = _Counter()
    protocol = amp.BinaryBoxProtocol(counter)
    protocol.makeConnection(StringTransport())
    started = time.perf_counter()
    for chunk in CHUNKS:
        protocol.dataReceived(chunk)
    elapsed = time.perf_counter() - started
    assert counter.count == len(BOXES)
    return counter.count, elapsed


def decodeFast(param):
    counter = _Counter()
    received = counter.ampBoxReceived
    decoder = BoxDecoder(amp.AmpBox)
    started = time.perf_counter()
    for chunk in CHUNKS:
        for box in decoder.feed(chunk):
            received(box)
    elapsed = time.perf_counter() - started
    assert counter.count == len(BOXES)
    return counter.count, elapsed


def encodeTwisted(param):
    started = time.perf_counter()
    data = b"".join([box.serialize() for box in BOXES])
    elapsed = time.perf_counter() - started
    assert len(data) == len(STREAM)
    return len(BOXES), elapsed


def encodeFastBatched(param):
    # As a transport flush does: everything queued, in one call.
    batch = 256
    started = time.perf_counter()
    data = b"".join([encode_boxes(BOXES[i : i + batch]) for i in range(0, len(BOXES), batch)])
    elapsed = time.perf_counter() - started
    assert data == STREAM
    return len(BOXES), elapsed


def encodeFastSingle(param):
    started = time.perf_counter()
    data = b"".join([encode_box(box) for box in BOXES])
    elapsed = time.perf_counter() - started
    assert len(data) == len(STREAM)
    return len(BOXES), elapsed


SCENARIOS = [
    Scenario(
        name="codec-decode",
        title="Decode 20,000 command boxes in 64 KiB chunks",
        unit="boxes/s",
        params=["stream"],
        implementations={"twisted": decodeTwisted, "pyamp_fds": decodeFast},
        anchor="twisted",
        targets=[Target("pyamp_fds", "twisted", 10.0)],
        quickRepetitions=5,
        fullRepetitions=15,
    ),
    Scenario(
        name="codec-encode",
        title="Encode 20,000 command boxes",
        unit="boxes/s",
        params=["boxes"],
        implementations={
            "twisted": encodeTwisted,
            "pyamp_fds-batched": encodeFastBatched,
            "pyamp_fds-single": encodeFastSingle,
        },
        anchor="twisted",
        targets=[Target("pyamp_fds-batched", "twisted", 3.0)],
        quickRepetitions=5,
        fullRepetitions=15,
    ),
]
