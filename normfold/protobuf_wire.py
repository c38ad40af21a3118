"""The protobuf wire format, as far as normfold reads and writes it by hand: varints, field keys, and the
fields of one message located in a buffer without parsing (or copying) their values.

protobuf's own API parses or serializes a whole message at once, which for a model with its weights inside
the file means holding every weight twice; walking the fields lets the weights stay where they are.
"""

from __future__ import annotations

import dataclasses
import mmap
from collections.abc import Iterator

# What the walker reads: anything indexable by byte position (a file mapped whole, bytes).
Buffer = bytes | memoryview | mmap.mmap

VARINT, FIXED64, LENGTH_DELIMITED, FIXED32 = 0, 1, 2, 5


class MalformedMessage(ValueError):
    """The bytes are not a protobuf message this walker reads (protobuf's own parser then says why)."""


@dataclasses.dataclass(frozen=True)
class Field:
    """One field of a message: its number and wire type, where it starts (its key) and where its value lies."""

    number: int
    wire_type: int
    start: int
    value_start: int
    end: int


def decode_varint(buffer: Buffer, position: int, end: int) -> tuple[int, int]:
    """The varint at `position` and the position after it."""
    result = shift = 0
    while True:
        if position >= end or shift > 63:
            raise MalformedMessage(f"truncated or overlong varint at byte {position}")
        byte = buffer[position]
        position += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, position
        shift += 7


def encode_varint(value: int) -> bytes:
    """`value` (non-negative) as a varint."""
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def key(number: int, wire_type: int) -> bytes:
    """The key that starts a field."""
    return encode_varint(number << 3 | wire_type)


def length_delimited(number: int, value: bytes) -> bytes:
    """A whole length-delimited field: key, length, value."""
    return key(number, LENGTH_DELIMITED) + encode_varint(len(value)) + value


def fields(buffer: Buffer, start: int, end: int) -> Iterator[Field]:
    """The fields of the message in `buffer[start:end]`, in order, values not read (groups are refused)."""
    position = start
    while position < end:
        field_start = position
        tag, position = decode_varint(buffer, position, end)
        number, wire_type = tag >> 3, tag & 7
        value_start = position
        if wire_type == VARINT:
            _, position = decode_varint(buffer, position, end)
        elif wire_type == FIXED64:
            position += 8
        elif wire_type == FIXED32:
            position += 4
        elif wire_type == LENGTH_DELIMITED:
            length, value_start = decode_varint(buffer, position, end)
            position = value_start + length
        else:
            raise MalformedMessage(f"wire type {wire_type} at byte {field_start}")
        if number == 0 or position > end:
            raise MalformedMessage(f"field at byte {field_start} runs past its message")
        yield Field(number, wire_type, field_start, value_start, position)
