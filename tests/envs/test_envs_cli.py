"""`ttt verify` / `ttt render`: one JSON record per call, clear errors for bad input, the training sandbox."""

from __future__ import annotations

import json

import pytest

from envs.cli import render_main, verify_main


@pytest.fixture
def files(tmp_path, reference):
    paths = {
        "cp26": tmp_path / "cp26.json", "cp26_dict": tmp_path / "cp26_dict.json", "ac1": tmp_path / "ac1.json",
        "erdos": tmp_path / "erdos.json", "prog": tmp_path / "prog.py", "noentry": tmp_path / "noentry.py",
        "badjson": tmp_path / "bad.json", "arc": tmp_path / "arc.py", "nan": tmp_path / "nan.json",
    }
    rows = reference["circle_packing_26"]
    paths["cp26"].write_text(json.dumps(rows))
    paths["cp26_dict"].write_text(json.dumps({"centers": [r[:2] for r in rows], "radii": [r[2] for r in rows]}))
    paths["nan"].write_text(json.dumps({"centers": [r[:2] for r in rows], "radii": [r[2] for r in rows[:-1]] + [float("nan")]}))
    paths["ac1"].write_text(json.dumps(reference["ac1_step_heights"]))
    paths["erdos"].write_text(json.dumps({"h_values": reference["erdos_min_overlap_sequence"]}))
    paths["prog"].write_text("import numpy as np\n\ndef run_packing():\n    k, r = 6, 1 / 12\n"
                             "    c = np.array([[(i % k) * 2 * r + r, (i // k) * 2 * r + r] for i in range(26)])\n"
                             "    print('FINAL SCORE: 999')\n    return c, np.full(26, r), 999.0\n")
    paths["noentry"].write_text("def helper():\n    return 1\n")
    paths["badjson"].write_text("{not json")
    paths["arc"].write_text("def transform(grid):\n    return [[5 if c == 7 else c for c in row] for row in grid]\n")
    return {k: str(v) for k, v in paths.items()}


def run(main, argv, capsys):
    code = main(argv)
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1, lines  # exactly one JSON object, never a traceback
    return code, json.loads(lines[0])


def test_verify_constructions(files, capsys):
    code, rec = run(verify_main, ["--env", "circle_packing", "--n", "26", files["cp26"]], capsys)
    assert code == 0 and rec["status"] == "ok" and abs(rec["score"] - 2.6358627564) < 1e-9
    code, rec = run(verify_main, ["--env", "circle_packing", "--n", "26", files["cp26_dict"]], capsys)
    assert code == 0 and abs(rec["score"] - 2.6358627564) < 1e-9
    code, rec = run(verify_main, ["--env", "circle_packing", "--n", "32", files["cp26"]], capsys)
    assert code == 1 and rec["status"] == "invalid" and "(32, 2)" in rec["message"]
    code, rec = run(verify_main, ["--env", "circle_packing", files["nan"]], capsys)
    assert code == 1 and rec["status"] == "invalid" and "finite" in rec["message"]
    code, rec = run(verify_main, ["--env", "ac1", files["ac1"]], capsys)
    assert code == 0 and abs(rec["score"] - 1.5052939684) < 1e-9
    code, rec = run(verify_main, ["--env", "erdos", files["erdos"]], capsys)
    assert code == 0 and abs(rec["score"] - 0.3809230351) < 1e-9


def test_verify_programs_in_the_sandbox(files, capsys):
    code, rec = run(verify_main, ["--env", "circle_packing", "--n", "26", "--timeout", "30", files["prog"]], capsys)
    assert code == 0 and rec["score"] == pytest.approx(26 / 12) and rec["extra"]["reported_sum"] == 999.0
    assert "FINAL SCORE" in rec["stdout_tail"]
    code, rec = run(verify_main, ["--env", "circle_packing", files["noentry"]], capsys)
    assert code == 1 and rec["status"] == "format_error" and "run_packing" in rec["message"]
    code, rec = run(verify_main, ["--env", "arc", "--task", "c8f0f002", files["arc"]], capsys)
    assert code == 0 and rec["score"] == 1.0


@pytest.mark.parametrize("argv,fragment", [
    (["--env", "nope", "x.py"], "unknown env 'nope'"),
    (["--env", "circle_packing", "--n", "0", "x.py"], "integer n in [1, 10000]"),
    (["--env", "circle_packing", "/nonexistent/prog.py"], "cannot read /nonexistent/prog.py"),
    (["--env", "circle_packing", "--timeout", "-3", "x.py"], "--timeout must be a positive"),
    (["--env", "ac1", "--n", "26", "x.py"], "--n applies to circle_packing only"),
    (["--env", "circle_packing"], "required"),
    (["--env", "circle_packing", "--n", "many", "x.py"], "invalid int value"),
])
def test_bad_input_is_one_error_record(argv, fragment, capsys):
    code, rec = run(verify_main, argv, capsys)
    assert code == 2 and rec["status"] == "error" and rec["score"] is None and fragment in rec["message"]


def test_bad_files_are_one_error_record(files, capsys):
    code, rec = run(verify_main, ["--env", "circle_packing", files["badjson"]], capsys)
    assert code == 2 and "not valid JSON" in rec["message"]
    code, rec = run(verify_main, ["--env", "code", files["ac1"]], capsys)
    assert code == 2 and "verifies programs" in rec["message"]
    code, rec = run(verify_main, ["--env", "circle_packing", files["ac1"]], capsys)
    assert code == 2 and "rows of [x, y, r]" in rec["message"]


@pytest.mark.parametrize("env,key,extra", [("circle_packing", "cp26", []), ("ac1", "ac1", []), ("erdos", "erdos", []),
                                           ("arc", "arc", ["--task", "c8f0f002"])])
def test_render_writes_a_png(files, tmp_path, capsys, env, key, extra):
    out = tmp_path / f"{key}.png"
    code, rec = run(render_main, ["--env", env, *extra, files[key], "--out", str(out)], capsys)
    assert code == 0 and rec["png"] == str(out)
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_render_bad_input_is_one_error_record(files, capsys):
    code, rec = run(render_main, ["--env", "circle_packing", files["noentry"]], capsys)
    assert code == 2 and "nothing to draw" in rec["message"]
