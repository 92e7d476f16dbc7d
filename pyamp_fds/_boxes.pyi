# The types of pyamp_fds._boxes, built from csrc/python/boxes.c.
from collections.abc import Mapping, Sequence
from typing import TypeVar

_B = TypeVar("_B", bound=dict[bytes, bytes])

KEYS_KEPT: int
KEY_KEPT_MAX: int

def build(box_type: type[_B], source: bytes, count: int, /) -> list[_B]: ...
def encode(boxes: Sequence[Mapping[bytes, bytes]], plain_type: type, /) -> bytes | None: ...
def keys_held() -> int: ...
