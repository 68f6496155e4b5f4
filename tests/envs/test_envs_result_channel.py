"""The parent's reader of sandbox outputs: only bounded, regular, pickle-free, finite data gets through."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest

from envs.result_channel import ChannelError, finite_float_array, parse_json, parse_npz, read_capped, read_tail


def npz_bytes(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def test_read_capped_reads_regular_files_and_reports_absence(tmp_path):
    (tmp_path / "a").write_bytes(b"hello")
    assert read_capped(str(tmp_path), "a", 5) == b"hello"
    assert read_capped(str(tmp_path), "missing", 5) is None


@pytest.mark.parametrize("kind,reason", [("symlink", "cannot open safely"), ("fifo", "not a regular file"),
                                         ("big", "over the"), ("dir", "not a regular file")])
def test_read_capped_refuses_hostile_files(tmp_path, kind, reason):
    target = tmp_path / "result"
    if kind == "symlink":
        (tmp_path / "secret").write_text("secret")
        os.symlink(tmp_path / "secret", target)
    elif kind == "fifo":
        os.mkfifo(target)  # opening must not block
    elif kind == "big":
        with open(target, "wb") as f:
            f.truncate(10 << 20)  # sparse: large size, no data
    else:
        target.mkdir()
    with pytest.raises(ChannelError, match=reason):
        read_capped(str(tmp_path), "result", 1 << 20)


def test_read_tail_returns_only_the_end(tmp_path):
    (tmp_path / "log").write_text("x" * 1000 + "THE END")
    assert read_tail(str(tmp_path), "log", 7) == "THE END"
    os.symlink(tmp_path / "log", tmp_path / "link")
    assert read_tail(str(tmp_path), "link", 7) == ""


def test_parse_npz_accepts_numeric_members_in_order():
    arrays = parse_npz(npz_bytes(r0=np.zeros((2, 2)), r1=np.arange(3), r2=np.array(True)), 1 << 20)
    assert [a.shape for a in arrays] == [(2, 2), (3,), ()]
    assert arrays[1].tolist() == [0, 1, 2]


class Payload:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


@pytest.mark.parametrize("data,reason", [
    (npz_bytes(r0=np.array([Payload()], dtype=object)), "not a plain numeric array"),
    (npz_bytes(r0=np.array(["text"])), "not numeric"),
    (npz_bytes(r0=np.zeros(2), evil=np.zeros(2)), "unexpected member"),
    (npz_bytes(r0=np.zeros(2), r2=np.zeros(2)), "without gaps"),
    (b"not a zip at all", "not a valid zip"),
])
def test_parse_npz_rejects_what_is_not_plain_arrays(data, reason):
    with pytest.raises(ChannelError, match=reason):
        parse_npz(data, 1 << 20)


def test_parse_npz_rejects_compressed_members_and_declared_bombs():
    buf = io.BytesIO()
    np.savez_compressed(buf, r0=np.zeros(10**6))  # 8 MB of zeros -> a few KB
    assert len(buf.getvalue()) < 100_000
    with pytest.raises(ChannelError, match="compressed"):
        parse_npz(buf.getvalue(), 64 << 20)
    with pytest.raises(ChannelError, match="over the cap"):
        parse_npz(npz_bytes(r0=np.zeros(1000)), 1000)


def test_parse_json_is_strict():
    assert parse_json(b'{"a": [1, 2.5, "x", true, null]}') == {"a": [1, 2.5, "x", True, None]}
    for bad, reason in ((b"[NaN]", "not a finite"), (b"[Infinity]", "not a finite"), (b"[-Infinity]", "not a finite"),
                        (b"[" * 100 + b"]" * 100, "nests deeper"), (b"\xff\xfe", "UTF-8"), (b"{'a': 1}", "does not parse")):
        with pytest.raises(ChannelError, match=reason):
            parse_json(bad)
    assert parse_json(b'["' + b"[" * 40 + b'"]') == ["[" * 40]  # brackets inside strings do not count


def test_finite_float_array_checks_type_shape_and_finiteness():
    assert finite_float_array(np.arange(6).reshape(3, 2), "c", (3, 2)).dtype == np.float64
    assert finite_float_array(np.zeros(7), "h", (None,)).shape == (7,)
    for value, shape, reason in ((np.zeros((3, 3)), (3, 2), "shape"), (np.zeros(3), (3, 2), "shape"),
                                 (np.array([1.0, np.nan]), (2,), "NaN"), (np.array([np.inf, 0.0]), (2,), "NaN"),
                                 (np.array([True, False]), (2,), "numeric"), ([1.0, 2.0], (2,), "numeric")):
        with pytest.raises(ChannelError, match=reason):
            finite_float_array(value, "x", shape)
