"""The AWS event stream binary framing (``application/vnd.amazon.eventstream``) used by Bedrock
ConverseStream: encoder (for the simulator) and an incremental decoder with CRC checks.

A message: total length (uint32 BE), headers length (uint32 BE), prelude CRC32 (of the first 8
bytes), headers, payload, message CRC32 (of everything before it). A header: name length
(uint8), name, value type (uint8), value; type 7 is a string (uint16 BE length + UTF-8).
"""

from __future__ import annotations

import struct
import zlib

_STRING = 7
_PRELUDE = 12
MAX_MESSAGE = 16 * 1024 * 1024


class EventStreamError(ValueError):
    pass


def encode_message(headers: dict[str, str], payload: bytes) -> bytes:
    header_bytes = b""
    for name, value in headers.items():
        raw_name = name.encode("utf-8")
        raw_value = value.encode("utf-8")
        header_bytes += (
            struct.pack(">B", len(raw_name))
            + raw_name
            + struct.pack(">BH", _STRING, len(raw_value))
            + raw_value
        )
    total = _PRELUDE + len(header_bytes) + len(payload) + 4
    prelude = struct.pack(">II", total, len(header_bytes))
    prelude += struct.pack(">I", zlib.crc32(prelude))
    message = prelude + header_bytes + payload
    return message + struct.pack(">I", zlib.crc32(message))


def _decode_headers(data: bytes) -> dict[str, str]:
    headers: dict[str, str] = {}
    pos = 0
    while pos < len(data):
        name_len = data[pos]
        name = data[pos + 1 : pos + 1 + name_len].decode("utf-8")
        pos += 1 + name_len
        value_type = data[pos]
        pos += 1
        if value_type == _STRING or value_type == 6:  # string or byte array
            (length,) = struct.unpack_from(">H", data, pos)
            value = data[pos + 2 : pos + 2 + length]
            headers[name] = value.decode("utf-8", "replace")
            pos += 2 + length
        elif value_type in (0, 1):  # bool true / false
            headers[name] = "true" if value_type == 0 else "false"
        elif value_type == 2:
            headers[name] = str(data[pos])
            pos += 1
        elif value_type == 3:
            headers[name] = str(struct.unpack_from(">h", data, pos)[0])
            pos += 2
        elif value_type == 4:
            headers[name] = str(struct.unpack_from(">i", data, pos)[0])
            pos += 4
        elif value_type in (5, 8):  # int64, timestamp
            headers[name] = str(struct.unpack_from(">q", data, pos)[0])
            pos += 8
        elif value_type == 9:  # uuid
            headers[name] = data[pos : pos + 16].hex()
            pos += 16
        else:
            raise EventStreamError(f"unknown header value type {value_type}")
    return headers


class EventStreamDecoder:
    """Feed bytes, get ``(headers, payload)`` messages; raises EventStreamError on a bad CRC
    or length."""

    def __init__(self) -> None:
        self._buf = b""
        self.error: EventStreamError | None = None

    def feed(self, data: bytes) -> list[tuple[dict[str, str], bytes]]:
        """Whole messages decoded so far. A bad frame after good ones returns the good ones and
        sets ``error`` (raised by the next call); a bad first frame raises at once."""
        if self.error is not None:
            raise self.error
        out: list[tuple[dict[str, str], bytes]] = []
        try:
            self._decode(data, out)
        except EventStreamError as exc:
            if not out:
                raise
            self.error = exc
        return out

    def _decode(self, data: bytes, out: list[tuple[dict[str, str], bytes]]) -> None:
        buf = self._buf + data
        self._buf = b""
        while len(buf) >= _PRELUDE:
            total, headers_len, prelude_crc = struct.unpack_from(">III", buf, 0)
            if zlib.crc32(buf[:8]) != prelude_crc:
                raise EventStreamError("prelude CRC mismatch")
            if total < _PRELUDE + 4 + headers_len or total > MAX_MESSAGE:
                raise EventStreamError(f"bad message length {total}")
            if len(buf) < total:
                break
            (message_crc,) = struct.unpack_from(">I", buf, total - 4)
            if zlib.crc32(buf[: total - 4]) != message_crc:
                raise EventStreamError("message CRC mismatch")
            headers = _decode_headers(buf[_PRELUDE : _PRELUDE + headers_len])
            payload = buf[_PRELUDE + headers_len : total - 4]
            out.append((headers, payload))
            buf = buf[total:]
        self._buf = buf

    def pending(self) -> bool:
        return bool(self._buf)
