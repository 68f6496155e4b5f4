"""The pieces under the server: seq_id ordering with idempotent retries, and tinker:// path safety."""

from __future__ import annotations

import threading

import pytest

from shim.checkpoint_paths import CheckpointStore
from shim.ordered_queue import SeqOrderedQueue


def test_requests_run_in_seq_id_order_waiting_for_gaps_and_retries_share_a_future():
    queue, ran = SeqOrderedQueue("m"), []
    gate = threading.Event()
    f3 = queue.submit(3, lambda: ran.append(3) or 3)
    f2 = queue.submit(2, lambda: ran.append(2) or 2)
    assert not f3.done() and not f2.done()  # seq_id 1 has not arrived
    f1 = queue.submit(1, lambda: gate.wait(5) and ran.append(1) or 1)
    assert queue.submit(3, lambda: ran.append("dup")) is f3  # a retry before it ran
    gate.set()
    assert [f.result(5) for f in (f1, f2, f3)] == [1, 2, 3] and ran == [1, 2, 3]
    assert queue.submit(2, lambda: ran.append("dup")) is f2  # a retry after it ran
    with pytest.raises(ValueError, match="too far ahead"):
        queue.submit(10**9, lambda: None)
    queue.close()


def test_a_failing_request_fails_alone():
    queue = SeqOrderedQueue("m")
    bad = queue.submit(1, lambda: 1 / 0)
    good = queue.submit(2, lambda: "ok")
    assert good.result(5) == "ok"
    with pytest.raises(ZeroDivisionError):
        bad.result(5)
    queue.close()
    with pytest.raises(ValueError, match="closed"):
        queue.submit(3, lambda: None)


def test_tinker_paths_map_inside_the_root_only(tmp_path):
    store = CheckpointStore(tmp_path)
    ref = store.parse("tinker://abc-1:train:0/weights/step_1")
    assert ref.directory == tmp_path.resolve() / "abc-1:train:0" / "weights" / "step_1"
    assert ref.tinker_path == "tinker://abc-1:train:0/weights/step_1"
    for bad in ["tinker://a/weights/..", "tinker://../weights/x", "tinker://a/weights/x/y", "file:///etc/passwd",
                "tinker://a/other/x", "tinker://a/weights/.hidden"]:
        with pytest.raises(ValueError):
            store.parse(bad)
    with pytest.raises(FileNotFoundError):
        store.existing("tinker://a:train:0/weights/missing")
