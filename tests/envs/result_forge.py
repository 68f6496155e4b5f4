"""Byte-level forgeries of what a sandboxed program can leave on its result channel: .npy files with any header,
zip archives with any central-directory field (the tests of the parent's parsers build their hostile inputs
here, field by field, rather than through numpy or zipfile, which only write valid files)."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np


def npy_bytes(header: str, body: bytes = b"", version: int = 1) -> bytes:
    """A .npy file whose header dict is exactly `header` (padded as numpy pads it)."""
    text = header.encode("latin1")
    text += b" " * (-(len(text) + 11) % 64) + b"\n"
    size = len(text).to_bytes(2 if version == 1 else 4, "little")
    return b"\x93NUMPY" + bytes([version, 0]) + size + text + body


def saved(arr) -> bytes:
    """np.save's bytes of `arr`."""
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def npz_bytes(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


# central-directory fields a forgery may set (struct "<4s6H3L5H2L" after the signature)
CD_FIELDS = ("made_by", "version", "flags", "method", "time", "date", "crc", "compress_size", "file_size",
             "name_len", "extra_len", "comment_len", "disk", "internal", "external", "offset")


def zip_bytes(members: list[tuple[str, bytes]], central: dict | None = None, extras: dict | None = None,
              eocd: dict | None = None) -> bytes:
    """A zip of stored `members` (name, data). `central[i]` overrides fields of member i's central-directory
    record (CD_FIELDS), `extras[i]` is its extra field (e.g. a zip64 record), `eocd` overrides the end record's
    fields (entries, size, offset). Everything not overridden is what a valid zip holds."""
    out, records = bytearray(), []
    for i, (name, data) in enumerate(members):
        raw_name, crc, offset = name.encode(), zlib.crc32(data), len(out)
        out += struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, 0, 0, 0, 0, crc, len(data), len(data),
                           len(raw_name), 0) + raw_name + data
        extra = (extras or {}).get(i, b"")
        fields = dict(made_by=20, version=20, flags=0, method=0, time=0, date=0, crc=crc, compress_size=len(data),
                      file_size=len(data), name_len=len(raw_name), extra_len=len(extra), comment_len=0, disk=0,
                      internal=0, external=0, offset=offset)
        fields.update((central or {}).get(i, {}))
        records.append(struct.pack("<4s6H3L5H2L", b"PK\x01\x02", *(fields[k] for k in CD_FIELDS)) + raw_name + extra)
    directory = b"".join(records)
    end = dict(entries=len(records), size=len(directory), offset=len(out))
    end.update(eocd or {})
    out += directory + struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, end["entries"], end["entries"], end["size"],
                                   end["offset"], 0)
    return bytes(out)


def zip64_extra(*values: int) -> bytes:
    """A zip64 extended-information extra field holding `values` (sizes, then the header offset)."""
    return struct.pack("<HH", 1, 8 * len(values)) + b"".join(struct.pack("<Q", v) for v in values)
