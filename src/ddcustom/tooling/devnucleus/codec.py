"""Event-stream message framing (aws-c-event-stream), both ways, standard library only.

Frame: ``[total u32][headers_len u32][prelude_crc u32][headers][payload][message_crc u32]``, big-endian.
"""

from __future__ import annotations

import enum
import socket
import struct
import zlib
from dataclasses import dataclass, field
from typing import NamedTuple, Optional, Union

PRELUDE_LEN = 12
TRAILER_LEN = 4
MAX_MESSAGE_LEN = 24 * 1024 * 1024
MAX_HEADERS_LEN = 128 * 1024

HeaderValue = Union[bool, int, bytes, str]


class FrameError(ValueError):
    """A frame that cannot be decoded (bad CRC, truncated, oversize, unknown header type)."""


class HeaderType(enum.IntEnum):
    BOOL_TRUE = 0
    BOOL_FALSE = 1
    BYTE = 2
    INT16 = 3
    INT32 = 4
    INT64 = 5
    BYTES = 6
    STRING = 7
    TIMESTAMP = 8  # int64 milliseconds since the epoch
    UUID = 9  # 16 bytes


# struct formats of the fixed-size integer header values
_INT_FORMATS = {
    HeaderType.BYTE: ">b",
    HeaderType.INT16: ">h",
    HeaderType.INT32: ">i",
    HeaderType.INT64: ">q",
    HeaderType.TIMESTAMP: ">q",
}


class Header(NamedTuple):
    name: str
    type: HeaderType
    value: HeaderValue

    @classmethod
    def string(cls, name: str, value: str) -> Header:
        return cls(name, HeaderType.STRING, value)

    @classmethod
    def int32(cls, name: str, value: int) -> Header:
        return cls(name, HeaderType.INT32, value)


@dataclass
class Message:
    headers: list[Header] = field(default_factory=list)
    payload: bytes = b""

    def get(self, name: str) -> Optional[HeaderValue]:
        """Value of the first header with this name (case-insensitive), or None."""
        lowered = name.lower()
        for header in self.headers:
            if header.name.lower() == lowered:
                return header.value
        return None


def _encode_header(header: Header) -> bytes:
    name = header.name.encode("utf-8")
    if not 0 < len(name) < 256:
        raise FrameError(f"header name {header.name!r} must be 1..255 bytes")
    kind = HeaderType(header.type)
    value = header.value
    if kind in (HeaderType.BOOL_TRUE, HeaderType.BOOL_FALSE):
        body = b""
    elif kind in _INT_FORMATS:
        body = struct.pack(_INT_FORMATS[kind], value)
    elif kind in (HeaderType.BYTES, HeaderType.STRING):
        raw = value.encode("utf-8") if isinstance(value, str) else bytes(value)
        if len(raw) > 0xFFFF:
            raise FrameError(f"header {header.name!r} value is longer than 65535 bytes")
        body = struct.pack(">H", len(raw)) + raw
    else:  # UUID
        body = bytes(value)  # type: ignore[arg-type]
        if len(body) != 16:
            raise FrameError(f"header {header.name!r}: a uuid is 16 bytes, got {len(body)}")
    return struct.pack(">B", len(name)) + name + struct.pack(">B", kind) + body


def encode(message: Message) -> bytes:
    """Encode one message; raises FrameError if it would exceed the protocol limits."""
    headers = b"".join(_encode_header(h) for h in message.headers)
    if len(headers) > MAX_HEADERS_LEN:
        raise FrameError(f"headers are {len(headers)} bytes, the maximum is {MAX_HEADERS_LEN}")
    total = PRELUDE_LEN + len(headers) + len(message.payload) + TRAILER_LEN
    if total > MAX_MESSAGE_LEN:
        raise FrameError(f"message is {total} bytes, the maximum is {MAX_MESSAGE_LEN}")
    prelude = struct.pack(">II", total, len(headers))
    prelude += struct.pack(">I", zlib.crc32(prelude))
    body = prelude + headers + message.payload
    return body + struct.pack(">I", zlib.crc32(body))


def check_prelude(prelude: bytes) -> tuple[int, int]:
    """Validate the 12-byte prelude; return (total length, headers length)."""
    if len(prelude) < PRELUDE_LEN:
        raise FrameError(f"truncated prelude: {len(prelude)} of {PRELUDE_LEN} bytes")
    total, headers_len, crc = struct.unpack(">III", prelude[:PRELUDE_LEN])
    if zlib.crc32(prelude[:8]) != crc:
        raise FrameError("prelude CRC mismatch")
    if total > MAX_MESSAGE_LEN:
        raise FrameError(f"message length {total} exceeds the maximum {MAX_MESSAGE_LEN}")
    if headers_len > MAX_HEADERS_LEN or PRELUDE_LEN + headers_len + TRAILER_LEN > total:
        raise FrameError(f"headers length {headers_len} does not fit a message of {total} bytes")
    return total, headers_len


def _decode_headers(data: bytes) -> list[Header]:
    headers: list[Header] = []
    pos = 0
    try:
        while pos < len(data):
            name_len = data[pos]
            name = data[pos + 1 : pos + 1 + name_len].decode("utf-8")
            pos += 1 + name_len
            kind = HeaderType(data[pos])
            pos += 1
            value: HeaderValue
            if kind in (HeaderType.BOOL_TRUE, HeaderType.BOOL_FALSE):
                value = kind == HeaderType.BOOL_TRUE
            elif kind in _INT_FORMATS:
                fmt = _INT_FORMATS[kind]
                (value,) = struct.unpack_from(fmt, data, pos)
                pos += struct.calcsize(fmt)
            elif kind in (HeaderType.BYTES, HeaderType.STRING):
                (length,) = struct.unpack_from(">H", data, pos)
                raw = data[pos + 2 : pos + 2 + length]
                if len(raw) != length:
                    raise FrameError(f"header {name!r} value is truncated")
                value = raw.decode("utf-8") if kind == HeaderType.STRING else raw
                pos += 2 + length
            else:  # UUID
                value = data[pos : pos + 16]
                if len(value) != 16:
                    raise FrameError(f"header {name!r} uuid is truncated")
                pos += 16
            headers.append(Header(name, kind, value))
    except (IndexError, struct.error, UnicodeDecodeError) as exc:
        raise FrameError(f"malformed headers: {exc}") from exc
    except ValueError as exc:  # HeaderType(unknown byte)
        if isinstance(exc, FrameError):
            raise
        raise FrameError(f"unknown header type: {exc}") from exc
    return headers


def decode(frame: bytes) -> Message:
    """Decode exactly one complete frame; raises FrameError on any inconsistency."""
    total, headers_len = check_prelude(frame)
    if len(frame) != total:
        raise FrameError(f"frame is {len(frame)} bytes, its prelude says {total}")
    (crc,) = struct.unpack(">I", frame[-TRAILER_LEN:])
    if zlib.crc32(frame[:-TRAILER_LEN]) != crc:
        raise FrameError("message CRC mismatch")
    headers_end = PRELUDE_LEN + headers_len
    return Message(_decode_headers(frame[PRELUDE_LEN:headers_end]), frame[headers_end:-TRAILER_LEN])


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = sock.recv(min(size - len(chunks), 1 << 20))
        if not chunk:
            if chunks:
                raise FrameError(f"connection closed inside a frame ({len(chunks)} of {size} bytes)")
            raise EOFError("connection closed")
        chunks += chunk
    return bytes(chunks)


def read_message(sock: socket.socket) -> Message:
    """Read one frame from a socket (its timeout bounds every recv).

    Raises EOFError on a clean close between frames, FrameError on a malformed frame.
    """
    prelude = _recv_exact(sock, PRELUDE_LEN)
    total, _ = check_prelude(prelude)
    return decode(prelude + _recv_exact(sock, total - PRELUDE_LEN))
