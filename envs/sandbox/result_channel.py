"""The parent's side of the result channel: collect what a sandboxed program writes, and parse it defensively.

Everything a program writes is untrusted. Rules (SANDBOX.md §5, issue 23):
  * its four outputs (stdout, stderr, the runner's status and result) are pipes, read by the parent while the
    program runs, each up to a cap; past the cap the parent closes its end (the writer gets EPIPE) and the
    output counts as over its cap. A pipe is no host file: it cannot be fallocated, truncated or seeked, so
    no call on an inherited fd reserves host disk (fallocate(FALLOC_FL_KEEP_SIZE) on a file ignores
    RLIMIT_FSIZE). After the program has ended the parent reads what is left without blocking, so a
    descendant still holding a pipe cannot make it wait;
  * npz: a zip whose members are exactly r0.npy, r1.npy, ..., each stored uncompressed (no zip bombs) with a
    declared size under the cap and together no larger than the file (no members sharing bytes); each .npy
    header is parsed by us and checked BEFORE anything is allocated: a plain numeric dtype (no object, no
    structured or subarray dtypes, so never pickle), a shape whose byte count equals the bytes present (a
    header claiming a 64 TiB array made np.load allocate it) and whose every dimension is bounded;
  * JSON: capped bytes, NaN/Infinity (also as overflowing literals like 1e999) rejected, bounded nesting,
    integers bounded in length.
Failures raise ChannelError with a one-line reason; the caller turns that into an `invalid` record. No other
exception escapes the parsers, whatever the bytes (tests/envs/test_envs_result_fuzz.py).
"""

from __future__ import annotations

import ast
import io
import json
import math
import os
import re
import zipfile
from typing import Any

import numpy as np


class ChannelError(ValueError):
    """The program's output cannot be read as the data we asked for."""


class OutputPipes:
    """One pipe per output of a run. `caps[name]`: the most bytes read from it; `tails[name]`: keep only its last
    that many bytes (logs, for humans and prompts only), else everything up to the cap.

        pipes = OutputPipes({"stdout": ..., "result": ...}, tails={"stdout": 2000})
        Popen(..., stdout=pipes.write_fds["stdout"], pass_fds=...); pipes.close_write_ends()
        while running: pipes.read(fd) for the fds poll() reports (pipes.read_fds)
        pipes.drain(); bytes(pipes.data["result"]), "result" in pipes.over_cap; pipes.close()
    """

    def __init__(self, caps: dict[str, int], tails: dict[str, int] | None = None):
        self.caps, self.tails = caps, tails or {}
        self.data = {name: bytearray() for name in caps}
        self.received = {name: 0 for name in caps}
        self.over_cap: set[str] = set()
        self.write_fds: dict[str, int] = {}
        self._names: dict[int, str] = {}  # read end -> output name, while open
        for name in caps:
            r, w = os.pipe2(os.O_CLOEXEC)
            self._names[r], self.write_fds[name] = name, w

    @property
    def read_fds(self) -> list[int]:
        return list(self._names)

    def close_write_ends(self) -> None:
        """Once the child holds them: ours would keep the pipes from ever reaching EOF."""
        for fd in self.write_fds.values():
            os.close(fd)
        self.write_fds = {}

    def read(self, fd: int) -> int:
        """Read what is ready on `fd` (poll said so; or non-blocking); closes it at EOF or past its cap.
        Returns the bytes received (0: at its end, or nothing there yet)."""
        name = self._names[fd]
        room = self.caps[name] - self.received[name]
        try:
            chunk = os.read(fd, min(1 << 16, room + 1))
        except BlockingIOError:
            return 0
        except OSError:
            chunk = b""
        self.received[name] += len(chunk)
        if self.received[name] > self.caps[name]:
            self.over_cap.add(name)
            chunk = chunk[:room]
        buf, keep = self.data[name], self.tails.get(name)
        buf += chunk
        if keep and len(buf) > 2 * keep:
            del buf[:-keep]
        if not chunk or name in self.over_cap:
            self._close(fd)
        return len(chunk)

    def drain(self) -> None:
        """Everything already in the pipes, without waiting for writers that may never close them."""
        for fd in self.read_fds:
            os.set_blocking(fd, False)
            while fd in self._names and self.read(fd) > 0:
                pass

    def text(self, name: str, n_chars: int) -> str:
        return self.data[name][-4 * n_chars:].decode("utf-8", "replace")[-n_chars:]

    def _close(self, fd: int) -> None:
        del self._names[fd]
        os.close(fd)

    def close(self) -> None:
        for fd in self.read_fds:
            self._close(fd)
        self.close_write_ends()


_MEMBER = re.compile(r"r(\d{1,3})\.npy")
_NPY_MAGIC = b"\x93NUMPY"
_MAX_HEADER = 4096  # numpy writes ~128 bytes; its own loader's default limit is 10000
_DESCR = re.compile(r"[<>|=]?[biuf](1|2|4|8|16)")  # the plain numeric dtypes np.save writes, nothing else
_MAX_NDIM = 32  # numpy's own limit is 64
_HEADER_CHARS = re.compile(rb"[\x20-\x5b\x5d-\x7e]*\n?")  # printable ASCII but the backslash, as np.save writes


def _header(raw: bytes, name: str) -> tuple[np.dtype, bool, tuple[int, ...], int]:
    """(dtype, fortran order, shape, offset of the data) of a .npy file; every field checked."""
    if len(raw) < 10 or raw[:6] != _NPY_MAGIC:
        raise ChannelError(f"{name} is not a .npy array")
    major = raw[6]
    if major == 1:
        header_len, start = int.from_bytes(raw[8:10], "little"), 10
    elif major in (2, 3):
        header_len, start = int.from_bytes(raw[8:12], "little"), 12
    else:
        raise ChannelError(f"{name} has unknown .npy version {major}")
    if header_len > _MAX_HEADER or start + header_len > len(raw):
        raise ChannelError(f"{name} has a {header_len} byte header (at most {_MAX_HEADER}, within the file)")
    text = raw[start:start + header_len]
    if _HEADER_CHARS.fullmatch(text) is None:  # no escapes either: literal_eval would warn on bad ones
        raise ChannelError(f"{name} has an unreadable header")
    try:
        header = ast.literal_eval(text.decode("ascii"))
    except Exception:  # SyntaxError, ValueError, TypeError (an unhashable key), RecursionError, MemoryError, ...
        raise ChannelError(f"{name} has an unreadable header") from None
    if not isinstance(header, dict) or len(header) != 3 or not all(
            type(k) is str for k in header) or set(header) != {"descr", "fortran_order", "shape"}:
        raise ChannelError(f"{name} header must have exactly descr, fortran_order and shape")
    descr, fortran, shape = header["descr"], header["fortran_order"], header["shape"]
    if not isinstance(descr, str) or not isinstance(fortran, bool) or not isinstance(shape, tuple):
        raise ChannelError(f"{name} header has fields of the wrong type")
    if _DESCR.fullmatch(descr) is None:
        raise ChannelError(f"{name} has dtype {descr[:40]!r}, not numeric")
    try:
        dtype = np.dtype(descr)
    except Exception:  # e.g. '<b8': a letter and a size numpy does not pair
        raise ChannelError(f"{name} has an unknown dtype {descr!r}") from None
    if len(shape) > _MAX_NDIM or not all(type(d) is int and d >= 0 for d in shape):
        raise ChannelError(f"{name} has an invalid shape")
    return dtype, fortran, shape, start + header_len


def parse_npy(raw: bytes, cap: int, name: str = "array") -> np.ndarray:
    """One .npy file's array, validated from its header before any allocation; a writable copy."""
    dtype, fortran, shape, offset = _header(raw, name)
    # Python ints: no overflow. Every dimension is bounded too, also where another is 0 (an empty array with
    # a dimension of 2**63 holds no bytes, but numpy cannot represent it).
    count = math.prod(shape)
    nbytes, body = count * dtype.itemsize, len(raw) - offset
    if nbytes > cap:
        raise ChannelError(f"{name} claims {nbytes} bytes of data, over the {cap} byte cap")
    if math.prod(max(d, 1) for d in shape) * dtype.itemsize > cap:
        raise ChannelError(f"{name} has shape {str(shape)[:80]}: a dimension past what the {cap} byte cap allows")
    if nbytes != body:
        raise ChannelError(f"{name} claims {nbytes} bytes of data but holds {body}")
    flat = np.frombuffer(raw, dtype=dtype, count=count, offset=offset)
    return flat.reshape(shape, order="F" if fortran else "C").copy()  # writable, like np.load's arrays


def parse_npz(data: bytes, member_cap: int) -> list[np.ndarray]:
    """The arrays r0, r1, ... of an uncompressed npz, in order; anything unexpected is an error."""
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
        infos = zf.infolist()
    except Exception as e:  # BadZipFile, and what zipfile raises besides on hostile bytes: NotImplementedError
        # (an entry 'needing version 10.0'), OverflowError, struct.error, ValueError, EOFError, ...
        raise ChannelError(f"result.npz is not a valid zip ({type(e).__name__}: {str(e)[:120]})") from None
    if len(infos) > 1000:
        raise ChannelError(f"result.npz has {len(infos)} members")
    index, declared = {}, 0
    for info in infos:
        m = _MEMBER.fullmatch(info.filename)
        if m is None:
            raise ChannelError(f"result.npz has an unexpected member {info.filename[:60]!r}")
        if int(m.group(1)) in index:
            raise ChannelError(f"result.npz lists {info.filename} twice")
        if info.compress_type != zipfile.ZIP_STORED:
            raise ChannelError(f"result.npz member {info.filename} is compressed; only stored members are read")
        if info.file_size > member_cap or info.compress_size != info.file_size:
            raise ChannelError(f"result.npz member {info.filename} declares {info.file_size} bytes "
                               f"({info.compress_size} stored), over the cap or inconsistent")
        if not 0 <= info.header_offset < len(data):
            raise ChannelError(f"result.npz member {info.filename} starts at {info.header_offset}, outside the file")
        index[int(m.group(1))] = info
        declared += info.file_size
    if declared > len(data):  # stored members cannot add up to more than the file unless they share bytes
        raise ChannelError(f"result.npz members declare {declared} bytes in a {len(data)} byte file")
    if sorted(index) != list(range(len(index))):
        raise ChannelError("result.npz members are not r0..rN without gaps")
    arrays = []
    for i in range(len(index)):
        try:
            raw = zf.read(index[i])
        except Exception as e:  # a bad CRC or local header, and the rest of zipfile's repertoire
            raise ChannelError(f"result.npz member r{i} cannot be read ({type(e).__name__}: {str(e)[:120]})") from None
        try:
            arrays.append(parse_npy(raw, member_cap, f"result.npz member r{i}"))
        except ChannelError as e:
            raise ChannelError(f"{e}: not a plain numeric array") from None
    return arrays


def _reject_constant(name: str) -> Any:
    raise ChannelError(f"JSON contains {name}, which is not a finite number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ChannelError(f"JSON number {text[:40]} is not a finite float")
    return value


def parse_json(data: bytes, max_depth: int = 32) -> Any:
    """Strict JSON: UTF-8, finite numbers only, nesting at most `max_depth`, integers of at most 4300 digits."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ChannelError("JSON is not UTF-8") from None
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:  # a cheap scan so that nesting bombs never reach the recursive parser
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
            if deepest > max_depth:
                raise ChannelError(f"JSON nests deeper than {max_depth}")
        elif ch in "]}":
            depth -= 1
    try:
        return json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float, parse_int=_bounded_int)
    except ChannelError:
        raise
    except (ValueError, RecursionError, MemoryError) as e:
        raise ChannelError(f"JSON does not parse ({str(e)[:120]})") from None


def _bounded_int(text: str) -> int:
    if len(text) > 4300:  # Python's own int/str limit; quadratic conversion beyond it
        raise ChannelError(f"JSON integer of {len(text)} digits")
    return int(text)


def finite_float_array(value: Any, name: str, shape: tuple[int | None, ...]) -> np.ndarray:
    """`value` as a float64 array of this shape (None = any length) with only finite entries."""
    if not isinstance(value, np.ndarray) or value.dtype.kind not in "biuf" or value.dtype.kind == "b":
        raise ChannelError(f"{name} must be a numeric array")
    arr = value.astype(np.float64)
    if arr.ndim != len(shape) or any(want is not None and got != want for got, want in zip(arr.shape, shape)):
        want = "(" + ", ".join("n" if s is None else str(s) for s in shape) + ")"
        raise ChannelError(f"{name} has shape {arr.shape}, expected {want}")
    if not np.all(np.isfinite(arr)):
        raise ChannelError(f"{name} contains NaN or infinite values")
    return arr
