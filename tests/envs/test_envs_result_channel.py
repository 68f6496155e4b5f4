"""The parent's reader of sandbox outputs: only bounded, regular, pickle-free, finite data gets through."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest

from envs.sandbox.result_channel import ChannelError, finite_float_array, parse_json, parse_npz, read_capped, read_tail
from result_forge import npy_bytes, npz_bytes, saved, zip64_extra, zip_bytes


def stored_npz(**members: bytes) -> bytes:
    return zip_bytes([(name + ".npy", raw) for name, raw in members.items()])


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


# --- headers that lie about sizes (issue 14 item 3): validated before anything is allocated -------------

TIB64 = 64 << 40


@pytest.mark.parametrize("raw,reason", [
    (npy_bytes(f"{{'descr': '<f8', 'fortran_order': False, 'shape': ({TIB64 // 8},), }}", b"\0" * 64), "claims"),
    (npy_bytes("{'descr': '<f8', 'fortran_order': False, 'shape': (2147483648, 2147483648, 2147483648), }"), "claims"),
    (npy_bytes("{'descr': '<f8', 'fortran_order': False, 'shape': (4,), }", b"\0" * 16), "holds 16"),
    (npy_bytes("{'descr': '<f8', 'fortran_order': False, 'shape': (-1,), }"), "invalid shape"),
    (npy_bytes("{'descr': '<f8', 'fortran_order': False, 'shape': (1.5,), }"), "invalid shape"),
    (npy_bytes("{'descr': '|O', 'fortran_order': False, 'shape': (1,), }", b"\0" * 8), "not numeric"),
    (npy_bytes("{'descr': [('a', '<f8')], 'fortran_order': False, 'shape': (1,), }", b"\0" * 8), "wrong type"),
    (npy_bytes("{'descr': '<V1000000', 'fortran_order': False, 'shape': (1,), }"), "not numeric"),
    (npy_bytes("{'descr': '<f8', 'fortran_order': 0, 'shape': (1,), }", b"\0" * 8), "wrong type"),
    (npy_bytes("{'descr': '<f8', 'fortran_order': False, 'shape': (1,), 'x': 1}", b"\0" * 8), "exactly"),
    (npy_bytes("{'descr': '<f8', 'fortran_order': False, 'shape': (1,), }" + " " * 70000, b"\0" * 8, 2), "header"),
    (npy_bytes("__import__('os').system('true')"), "unreadable header"),
    (npy_bytes("{'descr': '<f8', 'fortran_order': False, 'shape': " + "(" * 500 + ")" * 500 + "}"), "header"),
    (b"\x93NUMPY\x09\x00", "not a .npy"),
    (b"\x93NUMPY\x07\x00\x10\x00" + b" " * 16, "version"),
])
def test_parse_npz_checks_npy_headers_before_allocating(raw, reason):
    with pytest.raises(ChannelError, match=reason):
        parse_npz(stored_npz(r0=raw), 8 << 20)


def test_parse_npz_reads_valid_headers_of_every_layout():
    c = np.arange(12, dtype=np.int32).reshape(3, 4)
    for arr in (c, np.asfortranarray(c), np.zeros((0, 5)), np.float32(2.5), np.array([True, False])):
        (got,) = parse_npz(stored_npz(r0=saved(arr)), 1 << 20)
        assert got.dtype == np.asarray(arr).dtype and np.array_equal(got, arr) and got.flags.writeable


def test_parse_npz_rejects_members_declaring_more_than_the_file():
    data = bytearray(npz_bytes(r0=np.zeros(4)))
    central = data.rindex(b"PK\x01\x02")
    lie = (len(data) + 100).to_bytes(4, "little")
    data[central + 20:central + 28] = lie + lie  # compressed and uncompressed size
    with pytest.raises(ChannelError):
        parse_npz(bytes(data), 8 << 20)


@pytest.mark.parametrize("text,reason", [(b"[1e999]", "not a finite"), (b'{"a": -1e400}', "not a finite"),
                                         (b"[" + b"7" * 5000 + b"]", "integer"), (b"[NaN]", "NaN"),
                                         (b"[" * 33 + b"]" * 33, "deeper"), (b'"\xff"', "UTF-8")])
def test_parse_json_rejects_overflowing_and_oversized_values(text, reason):
    with pytest.raises(ChannelError, match=reason):
        parse_json(text)


# --- four results that raised in the parent instead of coming back as a verdict (issue 23 item 1) ---------

F8 = "{'descr': '<f8', 'fortran_order': False, 'shape': (1,), }"


@pytest.mark.parametrize("data,reason", [
    # ast.literal_eval raised TypeError building the header dict
    (stored_npz(r0=npy_bytes("{['descr']: 1, 'fortran_order': False, 'shape': (1,)}", b"\0" * 8)), "unreadable header"),
    # zero bytes of data, but numpy cannot make an array with a dimension of 2**63 (ValueError)
    (stored_npz(r0=npy_bytes(f"{{'descr': '<f8', 'fortran_order': False, 'shape': (0, {2 ** 63}), }}")), "a dimension past"),
    # zipfile raised NotImplementedError("zip file version 10.0") while listing the members
    (zip_bytes([("r0.npy", npy_bytes(F8, b"\0" * 8))], central={0: {"version": 100}}), "version 10.0"),
    # a zip64 header offset of 2**64-1: BytesIO.seek raised OverflowError
    (zip_bytes([("r0.npy", npy_bytes(F8, b"\0" * 8))], central={0: {"offset": 0xFFFFFFFF}},
               extras={0: zip64_extra(2 ** 64 - 1)}), "outside the file"),
])
def test_results_that_raised_now_get_a_reason(data, reason):
    with pytest.raises(ChannelError, match=reason):
        parse_npz(data, 8 << 20)


def test_a_forged_zip_that_is_valid_still_parses():
    """The forgeries above differ from this one only in the field named."""
    (got,) = parse_npz(zip_bytes([("r0.npy", npy_bytes(F8, b"\0" * 8))]), 8 << 20)
    assert got.tolist() == [0.0]
