"""Event-stream framing: both ways, against botocore's decoder, and malformed frames."""

from __future__ import annotations

import socket
import struct
import threading
import zlib

import pytest
from botocore.eventstream import EventStreamBuffer
from hypothesis import given
from hypothesis import strategies as st

from ddcustom.tooling.devnucleus.codec import (
    MAX_MESSAGE_LEN,
    FrameError,
    Header,
    HeaderType,
    Message,
    decode,
    encode,
    read_message,
)

ALL_TYPES = [
    Header("t", HeaderType.BOOL_TRUE, True),
    Header("f", HeaderType.BOOL_FALSE, False),
    Header("byte", HeaderType.BYTE, -7),
    Header("short", HeaderType.INT16, -30000),
    Header("int", HeaderType.INT32, 2_000_000_000),
    Header("long", HeaderType.INT64, -(2**60)),
    Header("bytes", HeaderType.BYTES, b"\x00\xffraw"),
    Header("str", HeaderType.STRING, "h\u00e9llo"),
    Header("ts", HeaderType.TIMESTAMP, 1_700_000_000_123),
    Header("uuid", HeaderType.UUID, bytes(range(16))),
]


def test_devnucleus_codec_round_trips_every_header_type() -> None:
    message = Message(list(ALL_TYPES), b'{"a": 1}')
    decoded = decode(encode(message))
    assert decoded == message
    assert decoded.get("STR") == "h\u00e9llo"  # names compare case-insensitively
    assert decoded.get("missing") is None


def test_devnucleus_codec_is_read_by_botocore() -> None:
    frame = encode(Message(list(ALL_TYPES), b"payload"))
    buffer = EventStreamBuffer()
    buffer.add_data(frame)
    (parsed,) = list(buffer)
    assert parsed.payload == b"payload"
    assert parsed.headers == {h.name: h.value for h in ALL_TYPES}


def test_devnucleus_codec_known_bytes() -> None:
    # one int32 header ":stream-id" = 1 and payload "{}", laid out by hand
    header = bytes([10]) + b":stream-id" + bytes([4]) + struct.pack(">i", 1)
    total = 12 + len(header) + 2 + 4
    prelude = struct.pack(">II", total, len(header))
    prelude += struct.pack(">I", zlib.crc32(prelude))
    body = prelude + header + b"{}"
    frame = body + struct.pack(">I", zlib.crc32(body))
    assert encode(Message([Header.int32(":stream-id", 1)], b"{}")) == frame
    assert decode(frame).get(":stream-id") == 1


@given(
    headers=st.lists(
        st.one_of(
            st.builds(Header.string, st.text(min_size=1, max_size=20), st.text(max_size=50)),
            st.builds(Header.int32, st.text(min_size=1, max_size=20), st.integers(-(2**31), 2**31 - 1)),
            st.builds(
                Header,
                st.text(min_size=1, max_size=20),
                st.just(HeaderType.BYTES),
                st.binary(max_size=50),
            ),
        ),
        max_size=8,
        unique_by=lambda h: h.name,  # botocore refuses repeated header names
    ),
    payload=st.binary(max_size=300),
)
def test_devnucleus_codec_round_trip_property(headers: list[Header], payload: bytes) -> None:
    headers = [h for h in headers if len(h.name.encode("utf-8")) < 256]
    message = Message(headers, payload)
    frame = encode(message)
    assert decode(frame) == message
    buffer = EventStreamBuffer()
    buffer.add_data(frame)
    (parsed,) = list(buffer)
    assert parsed.payload == payload


def _frame() -> bytearray:
    return bytearray(encode(Message([Header.string("k", "v")], b"body")))


def test_devnucleus_codec_rejects_bad_message_crc() -> None:
    frame = _frame()
    frame[-6] ^= 0xFF  # flip a payload byte
    with pytest.raises(FrameError, match="message CRC"):
        decode(bytes(frame))


def test_devnucleus_codec_rejects_bad_prelude_crc() -> None:
    frame = _frame()
    frame[9] ^= 0x01
    with pytest.raises(FrameError, match="prelude CRC"):
        decode(bytes(frame))


def test_devnucleus_codec_rejects_truncated_frames() -> None:
    frame = bytes(_frame())
    with pytest.raises(FrameError, match="truncated prelude"):
        decode(frame[:8])
    with pytest.raises(FrameError, match="prelude says"):
        decode(frame[:-1])


def test_devnucleus_codec_rejects_oversize() -> None:
    prelude = struct.pack(">II", MAX_MESSAGE_LEN + 1, 0)
    prelude += struct.pack(">I", zlib.crc32(prelude))
    with pytest.raises(FrameError, match="exceeds the maximum"):
        decode(prelude + b"\x00" * 4)
    with pytest.raises(FrameError, match="maximum"):
        encode(Message([], b"\x00" * MAX_MESSAGE_LEN))


def test_devnucleus_codec_rejects_unknown_header_type() -> None:
    header = bytes([1]) + b"k" + bytes([42])
    prelude = struct.pack(">II", 12 + len(header) + 4, len(header))
    prelude += struct.pack(">I", zlib.crc32(prelude))
    body = prelude + header
    with pytest.raises(FrameError, match="unknown header type"):
        decode(body + struct.pack(">I", zlib.crc32(body)))


def test_devnucleus_codec_reads_frames_from_a_socket() -> None:
    left, right = socket.socketpair()
    with left, right:
        right.settimeout(5)
        first = encode(Message([Header.int32(":stream-id", 3)], b"one"))
        second = encode(Message([], b"two"))
        # sent in pieces, as a stream may deliver it

        def send_in_pieces() -> None:
            left.sendall(first[:5])
            left.sendall(first[5:] + second)

        sender = threading.Thread(target=send_in_pieces)
        sender.start()
        assert read_message(right).payload == b"one"
        assert read_message(right).payload == b"two"
        sender.join(5)
        left.sendall(second[:15])
        left.shutdown(socket.SHUT_WR)
        with pytest.raises(FrameError, match="closed inside a frame"):
            read_message(right)
        with pytest.raises(EOFError):
            read_message(right)
