"""The parent's reader of sandbox outputs: only bounded, pickle-free, finite data gets through, from pipes."""

from __future__ import annotations

import io
import os
import select
import time

import numpy as np
import pytest

from envs.sandbox.result_channel import ChannelError, OutputPipes, finite_float_array, parse_json, parse_npz
from result_forge import npy_bytes, npz_bytes, saved, zip64_extra, zip_bytes


def stored_npz(**members: bytes) -> bytes:
    return zip_bytes([(name + ".npy", raw) for name, raw in members.items()])


def collect(pipes: OutputPipes, writes: dict[str, bytes], keep_open: bool = False) -> None:
    """Write to the pipes as a program would (from a thread: a pipe holds 64 KiB), then read like the parent."""
    import threading

    fds = {name: os.dup(fd) for name, fd in pipes.write_fds.items()}
    pipes.close_write_ends()

    def writer():
        for name, data in writes.items():
            try:
                _write_all(fds[name], data)
            except BrokenPipeError:  # the parent closed its end at the cap
                pass
        if not keep_open:
            for fd in fds.values():
                os.close(fd)

    thread = threading.Thread(target=writer)
    thread.start()
    deadline = time.monotonic() + 10
    while pipes.read_fds and time.monotonic() < deadline:
        ready, _, _ = select.select(pipes.read_fds, [], [], 0.05)
        for fd in ready:
            pipes.read(fd)
        if keep_open and not thread.is_alive():
            break
    thread.join()
    pipes.drain()
    if keep_open:
        for fd in fds.values():
            os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def test_output_pipes_keep_everything_up_to_the_cap_and_logs_as_tails():
    pipes = OutputPipes({"result": 1 << 20, "stdout": 1 << 20, "status": 100}, tails={"stdout": 7})
    try:
        collect(pipes, {"result": b"r" * 300_000, "stdout": b"x" * 1000 + b"THE END", "status": b'{"ok": true}'})
        assert bytes(pipes.data["result"]) == b"r" * 300_000 and pipes.text("stdout", 7) == "THE END"
        assert bytes(pipes.data["status"]) == b'{"ok": true}' and not pipes.over_cap and not pipes.read_fds
    finally:
        pipes.close()


def test_output_pipes_stop_reading_past_the_cap():
    """Past its cap an output is closed (the writer gets EPIPE) and marked, never read without end."""
    pipes = OutputPipes({"result": 1000, "stdout": 4096}, tails={"stdout": 10})
    try:
        collect(pipes, {"result": bytes(5 << 20), "stdout": b"y" * (1 << 20)})
        assert pipes.over_cap == {"result", "stdout"}
        assert len(pipes.data["result"]) == 1000 and pipes.received["result"] == 1001
        assert pipes.received["stdout"] == 4097 and pipes.text("stdout", 10) == "y" * 10
    finally:
        pipes.close()


def test_output_pipes_drain_without_waiting_for_a_writer_that_never_closes():
    """A descendant of the program that still holds a pipe (a setsid escapee) cannot make the parent wait."""
    pipes = OutputPipes({"status": 100, "result": 100})
    try:
        t0 = time.monotonic()
        collect(pipes, {"status": b"done"}, keep_open=True)
        assert bytes(pipes.data["status"]) == b"done" and pipes.data["result"] == b""
        assert time.monotonic() - t0 < 5 and len(pipes.read_fds) == 2  # still open: no EOF came
    finally:
        pipes.close()
    assert pipes.read_fds == [] and pipes.write_fds == {}


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
    (stored_npz(r0=npy_bytes(f"{{'descr': '<f8', 'fortran_order': False, 'shape': (0, {2 ** 63}), }}")),
     "a dimension past"),
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
