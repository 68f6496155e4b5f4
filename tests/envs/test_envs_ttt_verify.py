"""`ttt verify` scores TTT-Discover's published results exactly as its own verifiers do.

Files are written in the layouts of the TTT-Discover repository (results/mathematics/ttt_ac1_sequence.json is
{"sequence": [...]}, tasks/alphaevolve_cp/results/our_best_circles.json is {"circles": [[x, y, r], ...]}), from
the data shipped in envs/data/ttt_discover_reference.json. Expected values: the published ones (computed by
that repository's verifiers) and tests/reference_ttt.py, our restatement of those verifiers.
"""

from __future__ import annotations

import json
import os

import pytest

from envs import reference_data
from envs.cli import verify_main
from tests import reference_ttt as ref

SHARED = "/work/shared/reference/ttt_discover_reference.json"


@pytest.fixture(scope="module")
def ttt() -> dict:
    return reference_data.ttt_discover()


def verify(argv, capsys) -> tuple[int, dict]:
    code = verify_main(argv)
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1, lines
    return code, json.loads(lines[0])


def write(tmp_path, name: str, data) -> str:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return str(path)


@pytest.mark.skipif(not os.path.exists(SHARED), reason="no shared reference copy on this machine")
def test_packaged_copy_matches_the_shared_reference(ttt):
    with open(SHARED) as f:
        assert json.load(f) == ttt


def test_cp26_circles(ttt, tmp_path, capsys):
    rows = ttt["ttt_discover_cp26_circles_xyr"]
    code, rec = verify(["--env", "circle_packing", "--n", "26", write(tmp_path, "c.json", {"circles": rows})], capsys)
    expected = ref.cp_sum_radii([r[:2] for r in rows], [r[2] for r in rows], 26)
    assert code == 0 and rec["status"] == "ok"
    assert rec["score"] == expected == ttt["ttt_discover_cp26_reported_sum"] == 2.6359773947542573
    assert round(rec["score"], 10) == 2.6359773948 and rec["reward"] == rec["score"]


@pytest.mark.parametrize("key,layout,published", [
    ("ttt_discover_ac1_heights", "sequence", 1.5028628983),  # TTT-Discover's best, 30,000 pieces
    ("ac1_initial_state_heights_1319", "list", 1.5031635547),  # the state its AC1 runs start from
])
def test_ac1_sequences(ttt, tmp_path, capsys, key, layout, published):
    heights = ttt[key]
    data = {"sequence": heights} if layout == "sequence" else heights
    code, rec = verify(["--env", "ac1", write(tmp_path, "h.json", data)], capsys)
    expected = ref.ac1_c1([float(x) for x in heights])
    assert code == 0 and rec["status"] == "ok" and rec["extra"]["length"] == len(heights)
    assert rec["score"] == expected and round(expected, 10) == published
    assert rec["reward"] == ref.ac1_reward(expected) and rec["value"] == -expected


def test_programs_returning_them_score_the_same_in_the_sandbox(ttt, tmp_path, capsys):
    rows = ttt["ttt_discover_cp26_circles_xyr"]
    cp = (f"import numpy as np\n\nROWS = {rows!r}\n\ndef run_packing():\n    a = np.array(ROWS)\n"
          "    return a[:, :2], a[:, 2], float(a[:, 2].sum())\n")
    code, rec = verify(["--env", "circle_packing", "--n", "26", "--timeout", "60", write(tmp_path, "cp.py", cp)], capsys)
    assert code == 0 and rec["score"] == 2.6359773947542573, rec
    heights = ttt["ac1_initial_state_heights_1319"]
    ac1 = f"H = {heights!r}\n\ndef propose_candidate(seed=42, budget_s=1000):\n    return H\n"
    code, rec = verify(["--env", "ac1", "--timeout", "60", write(tmp_path, "ac1.py", ac1)], capsys)
    assert code == 0 and rec["score"] == ref.ac1_c1(heights), rec


def test_ac2_program_and_file_score_as_ttt_discover(tmp_path, capsys):
    """AC2 through `ttt verify`: a program run in the sandbox and a JSON file of heights, both with a negative
    height and one above the cap, score exactly tests/reference_ttt.py's restatement of TTT-Discover's verifier."""
    heights = [float(x) for x in reference_data.constructions()["ac2_step_heights"]]
    heights[4], heights[9] = -0.3, 2500.0
    expected = ref.ac2_c2(heights)
    program = f"H = {heights!r}\n\ndef construct_function():\n    return H\n"
    code, rec = verify(["--env", "ac2", "--timeout", "60", write(tmp_path, "ac2.py", program)], capsys)
    assert code == 0 and rec["status"] == "ok" and rec["score"] == expected == rec["reward"], rec
    code, rec = verify(["--env", "ac2", write(tmp_path, "h.json", heights)], capsys)
    assert code == 0 and rec["score"] == expected and rec["extra"]["length"] == 50, rec
