"""The parent's side of the result channel: read what a sandboxed program left behind, defensively.

Everything in a run's out/ dir was written by untrusted code. Rules (SANDBOX.md §5):
  * open with O_NOFOLLOW | O_NONBLOCK relative to the out dir's fd: a planted symlink fails (ELOOP),
    a FIFO never blocks, and only a regular file (S_ISREG) under the size cap is read;
  * npz: a zip whose members are exactly r0.npy, r1.npy, ..., each stored uncompressed (no zip bombs) with a
    declared size under the cap, each parsed with np.load(allow_pickle=False) (no pickle payloads);
  * JSON: capped bytes, NaN/Infinity rejected, bounded nesting.
Failures raise ChannelError with a one-line reason; the caller turns that into an `invalid` record.
"""

from __future__ import annotations

import io
import json
import os
import re
import stat
import zipfile
from typing import Any

import numpy as np


class ChannelError(ValueError):
    """The program's output cannot be read as the data we asked for."""


def read_capped(dir_path: str, name: str, cap: int) -> bytes | None:
    """The bytes of dir_path/name if it is a regular file of at most `cap` bytes; None if it is absent."""
    dir_fd = os.open(dir_path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
        except FileNotFoundError:
            return None
        except OSError as e:
            raise ChannelError(f"{name}: cannot open safely ({os.strerror(e.errno)})") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise ChannelError(f"{name}: not a regular file")
            if st.st_size > cap:
                raise ChannelError(f"{name}: {st.st_size} bytes, over the {cap} byte cap")
            chunks, total = [], 0
            while total <= cap:
                chunk = os.read(fd, min(1 << 20, cap + 1 - total))
                if not chunk:
                    break
                chunks.append(chunk)
                total += len(chunk)
            if total > cap:
                raise ChannelError(f"{name}: grew past the {cap} byte cap while being read")
            return b"".join(chunks)
        finally:
            os.close(fd)
    finally:
        os.close(dir_fd)


def read_tail(dir_path: str, name: str, n_chars: int) -> str:
    """The last `n_chars` characters of a log file (for humans and prompts only; never parsed)."""
    try:
        fd = os.open(os.path.join(dir_path, name), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return ""
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return ""
        os.lseek(fd, max(0, st.st_size - 4 * n_chars), os.SEEK_SET)
        data = os.read(fd, 4 * n_chars)
    finally:
        os.close(fd)
    return data.decode("utf-8", "replace")[-n_chars:]


_MEMBER = re.compile(r"r(\d{1,3})\.npy")


def parse_npz(data: bytes, member_cap: int) -> list[np.ndarray]:
    """The arrays r0, r1, ... of an uncompressed npz, in order; anything unexpected is an error."""
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
        infos = zf.infolist()
    except (zipfile.BadZipFile, ValueError, OSError) as e:
        raise ChannelError(f"result.npz is not a valid zip ({e})") from None
    index = {}
    for info in infos:
        m = _MEMBER.fullmatch(info.filename)
        if m is None:
            raise ChannelError(f"result.npz has an unexpected member {info.filename[:60]!r}")
        if info.compress_type != zipfile.ZIP_STORED:
            raise ChannelError(f"result.npz member {info.filename} is compressed; only stored members are read")
        if info.file_size > member_cap:
            raise ChannelError(f"result.npz member {info.filename} declares {info.file_size} bytes, over the cap")
        index[int(m.group(1))] = info
    if sorted(index) != list(range(len(index))):
        raise ChannelError("result.npz members are not r0..rN without gaps")
    arrays = []
    for i in range(len(index)):
        try:
            raw = zf.read(index[i])
            arr = np.load(io.BytesIO(raw), allow_pickle=False)
        except (ValueError, OSError, EOFError, zipfile.BadZipFile, RuntimeError) as e:
            raise ChannelError(f"result.npz member r{i} is not a plain numeric array ({str(e)[:120]})") from None
        if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "biuf":
            raise ChannelError(f"result.npz member r{i} has dtype {getattr(arr, 'dtype', '?')}, not numeric")
        arrays.append(arr)
    return arrays


def _reject_constant(name: str) -> Any:
    raise ChannelError(f"JSON contains {name}, which is not a finite number")


def parse_json(data: bytes, max_depth: int = 32) -> Any:
    """Strict JSON: UTF-8, no NaN/Infinity, nesting at most `max_depth`."""
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
        return json.loads(text, parse_constant=_reject_constant)
    except ChannelError:
        raise
    except (ValueError, RecursionError) as e:
        raise ChannelError(f"JSON does not parse ({str(e)[:120]})") from None


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
