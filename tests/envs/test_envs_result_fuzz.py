"""Fuzz of every parser of what a sandboxed program leaves (issue 23 item 1): whatever the bytes, a parser
returns data or raises ChannelError (which the parent turns into an `invalid` verdict with its reason); no
other exception escapes. Seeded, so a failure names the case that reproduces it:

    TTT_FUZZ_SEED=7 TTT_FUZZ_CASES=50000 pytest tests/envs/test_envs_result_fuzz.py   # explore beyond CI

Cases are structured, not only random bytes: .npy headers from a grammar of right and wrong fields, zips
with any central-directory field, zip64 record or end record forged, valid files of each kind mutated
byte by byte, JSON documents with hostile numbers, strings and nesting.
"""

from __future__ import annotations

import json
import os
import random
import struct

import numpy as np
import pytest

from envs.sandbox.result_channel import ChannelError, parse_json, parse_npy, parse_npz
from result_forge import CD_FIELDS, npy_bytes, npz_bytes, saved, zip64_extra, zip_bytes

SEED = int(os.environ.get("TTT_FUZZ_SEED", "23"))
CASES = int(os.environ.get("TTT_FUZZ_CASES", "4000"))  # per parser: >= 12,000 in all
CAP = 1 << 16
HOSTILE_INTS = (0, 1, 2, 3, 7, 255, 2 ** 15, 2 ** 31 - 1, 2 ** 31, 2 ** 32 - 1, 2 ** 32, 2 ** 63 - 1, 2 ** 63,
                2 ** 64 - 1, 2 ** 64, 2 ** 70, -1, -(2 ** 63))


def mutate(rng: random.Random, data: bytes) -> bytes:
    """A few random edits: flip, overwrite with a hostile byte, insert, delete, truncate, duplicate a slice."""
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op, at = rng.randrange(6), rng.randrange(len(buf) + 1)
        if op == 0 and buf:
            buf[at % len(buf)] ^= 1 << rng.randrange(8)
        elif op == 1 and buf:
            buf[at % len(buf)] = rng.choice((0, 0xFF, 0x7F, 0x80, ord("("), ord("{"), ord("'")))
        elif op == 2:
            buf[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        elif op == 3:
            del buf[at:at + rng.randint(1, 16)]
        elif op == 4:
            del buf[at:]
        else:
            buf[at:at] = buf[max(0, at - 32):at]
    return bytes(buf)


def random_array(rng: random.Random) -> np.ndarray:
    dtype = rng.choice(("<f8", "<f4", "<i8", ">i4", "|u1", "|b1", "<f2", ">f8"))
    shape = tuple(rng.choice((0, 1, 2, 3, 5)) for _ in range(rng.randint(0, 3)))
    arr = np.arange(int(np.prod(shape)), dtype=np.float64).reshape(shape).astype(dtype)
    return np.asfortranarray(arr) if rng.random() < 0.2 else arr


def header_text(rng: random.Random) -> tuple[str, int]:
    """An .npy header dict from a grammar of valid and hostile keys and values (each field valid half the
    time), and the body length that would match it (0 when nothing would)."""
    good = lambda: rng.random() < 0.5  # noqa: E731
    itemsize = rng.choice((1, 2, 4, 8))
    descr = (f"'{rng.choice('<>|')}{rng.choice('biuf')}{itemsize}'" if good() else
             rng.choice(("'|O'", "'<U3'", "'|V8'", "'<c16'", "'<f16'", "'<b8'", "'f3'", "'(2,)<f8'", "[('a', '<f8')]",
                         "1", "None", "b'<f8'", "'<f8' * 3", "'" + "x" * rng.randint(0, 60) + "'")))
    fortran = rng.choice(("False", "True")) if good() else rng.choice(("0", "1", "None", "'no'", "[]"))
    dims = [rng.choice((0, 1, 2, 3) if good() else HOSTILE_INTS) for _ in range(rng.choice((0, 1, 2, 3, 5, 33, 65)))]
    shape = ("(" + ", ".join(map(str, dims)) + ("," if len(dims) == 1 else "") + ")" if good() else
             rng.choice(("(1.5,)", "[2]", "(True,)", "((1,),)", "2", "(" * 60 + ")" * 60, "(1e999,)")))
    entries = [f"'descr': {descr}", f"'fortran_order': {fortran}", f"'shape': {shape}"]
    if not good():
        entries.insert(rng.randrange(4), rng.choice(("'x': 1", "['descr']: 1", "1: 2", "(1, [2]): 3", "{}: 0",
                                                     "'descr': '<f8'", "None: None", "'shape': ()")))
    if not good() and rng.random() < 0.3:
        del entries[rng.randrange(len(entries))]
    text = "{" + ", ".join(entries) + (rng.choice(("}", ", }")) if good() else rng.choice(("", "}}", "} + 1", "}[0]")))
    if rng.random() < 0.1:
        text = mutate(rng, text.encode()).decode("latin1")
    size = int(np.prod(dims, dtype=object)) * itemsize if dims else itemsize
    return text, size if 0 <= size < 4096 else 0


def npy_case(rng: random.Random) -> bytes:
    kind = rng.randrange(5)
    if kind == 0:  # a grammar header with a body of the matching length, or another
        text, size = header_text(rng)
        body = bytes(size if rng.random() < 0.7 else rng.choice((0, 1, 7, 8, 16, 64, 200)))
        return npy_bytes(text, body, version=rng.choice((1, 1, 2, 3)))
    if kind == 4:  # np.save's own output, as a well-behaved program leaves it
        return saved(random_array(rng))
    if kind == 1:  # np.save's output, mutated
        return mutate(rng, saved(random_array(rng)))
    if kind == 2:  # a header length field that lies
        raw = bytearray(saved(random_array(rng)))
        raw[8:10] = rng.choice(HOSTILE_INTS[:10]).to_bytes(4, "little")[:2]
        raw[6] = rng.choice((1, 2, 3, 0, 4, 255))
        return bytes(raw)
    return b"\x93NUMPY"[:rng.randint(0, 6)] + bytes(rng.randrange(256) for _ in range(rng.randint(0, 40)))


def npz_case(rng: random.Random) -> bytes:
    kind = rng.randrange(5)
    n = rng.randint(1, 3)
    if kind == 0:  # np.savez's output (zip64 local records and all), mutated
        return mutate(rng, npz_bytes(**{f"r{i}": random_array(rng) for i in range(n)}))
    members = [(rng.choice((f"r{i}.npy", f"r{i}.npy", "r01.npy", "r0.npy", "../r0.npy", "x.npy", "r9999.npy")),
                npy_case(rng) if kind == 1 else saved(random_array(rng))) for i in range(n)]
    if kind == 1:  # valid zip, hostile .npy members
        return zip_bytes(members)
    if kind == 2:  # any central-directory field forged, and zip64 records with hostile values
        central = {rng.randrange(n): {rng.choice(CD_FIELDS): rng.choice((0, 1, 8, 12, 99, 100, 0xFFFF, 0xFFFFFFFF,
                                                                        rng.randrange(1 << 16)))}
                   for _ in range(rng.randint(1, 3))}
        for fields in central.values():  # 32-bit fields take 32-bit values; 16-bit ones 16-bit
            for key, value in fields.items():
                fields[key] = value & (0xFFFFFFFF if key in ("crc", "compress_size", "file_size", "offset") else 0xFFFF)
        extras = {}
        if rng.random() < 0.5:
            i = rng.randrange(n)
            central.setdefault(i, {}).update({k: 0xFFFFFFFF for k in rng.sample(("compress_size", "file_size",
                                                                                 "offset"), rng.randint(1, 3))})
            extras[i] = zip64_extra(*(rng.choice(HOSTILE_INTS) % 2 ** 64 for _ in range(rng.randint(0, 3))))
        return zip_bytes(members, central=central, extras=extras)
    if kind == 3:  # the end record lies
        eocd = {rng.choice(("entries", "size", "offset")): rng.choice((0, 1, 0xFFFF, 0xFFFFFFFF, rng.randrange(4096)))}
        if "entries" in eocd:
            eocd["entries"] &= 0xFFFF
        return zip_bytes(members, eocd=eocd)
    return mutate(rng, zip_bytes(members))


def json_value(rng: random.Random, depth: int = 0):
    kind = rng.randrange(8 if depth < 40 else 5)
    if kind == 0:
        return rng.choice((0, -1, 2 ** 63, -(2 ** 64), 10 ** 300, 7))
    if kind == 1:
        return rng.choice((0.5, -0.0, 1e308, 5e-324, 1.7976931348623157e308))
    if kind == 2:
        return rng.choice(("", "x", "\u0000", "\ud800", "\U0001f600", "[[[{{{", '"\\', "a" * 300))
    if kind == 3:
        return rng.choice((True, False, None))
    if kind == 4:
        return {"value": rng.choice((1, [1, 2], "x"))} if rng.random() < 0.5 else {"error": "E"}
    if kind in (5, 6):
        return [json_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    keys = ("value", "error", "a", "", "\ud83d")
    return {rng.choice(keys): json_value(rng, depth + 1) for _ in range(rng.randint(0, 3))}


def json_case(rng: random.Random) -> bytes:
    kind = rng.randrange(4)
    text = json.dumps(json_value(rng), ensure_ascii=rng.random() < 0.5)
    if kind == 0:
        return text.encode("utf-8", "surrogatepass")
    if kind == 1:  # literals json.dumps never writes: overflowing numbers, NaN, huge integers, deep nesting
        literal = rng.choice(("NaN", "-Infinity", "1e999", "-1e400", "1" * rng.choice((10, 4300, 4301, 6000)),
                              "[" * rng.randint(20, 3000) + "]" * rng.randint(0, 3000), '"\\ud800"', "1E+99999999",
                              "0." + "0" * 5000 + "1", "-", "tru", "[1,]", "{\"a\"}", "\"\\x\""))
        return ("[" + literal + "]" if rng.random() < 0.5 else literal).encode()
    if kind == 2:
        return mutate(rng, text.encode("utf-8", "surrogatepass"))
    return bytes(rng.randrange(256) for _ in range(rng.randint(0, 64)))


PARSERS = {
    "npy": (npy_case, lambda data: parse_npy(data, CAP)),
    "npz": (npz_case, lambda data: parse_npz(data, CAP)),
    "json": (json_case, lambda data: parse_json(data)),
}


@pytest.mark.parametrize("name", PARSERS)
def test_no_exception_but_channel_error_escapes_a_parser(name):
    generate, parse = PARSERS[name]
    rng = random.Random(f"{SEED}-{name}")
    outcomes = {"parsed": 0, "rejected": 0}
    for case in range(CASES):
        data = generate(rng)
        try:
            parse(data)
            outcomes["parsed"] += 1
        except ChannelError as e:
            assert str(e) and "\n" not in str(e), (case, e)  # a one-line reason
            outcomes["rejected"] += 1
        except Exception as e:  # noqa: BLE001 -- the failure this test exists to find
            pytest.fail(f"{name} case {case} (TTT_FUZZ_SEED={SEED}) raised {type(e).__name__}: {e}; "
                        f"input {data[:200]!r}")
    print(f"{name}: {CASES} cases, {outcomes}")
    # the generators reach both sides: valid data parses, hostile data is refused (not a vacuous fuzz)
    assert outcomes["parsed"] >= CASES // 50 and outcomes["rejected"] >= CASES // 2, outcomes


def test_the_fuzz_covers_at_least_ten_thousand_cases():
    assert CASES * len(PARSERS) >= 10_000


def test_mutations_of_valid_files_keep_their_structure_often_enough():
    """Sanity of the generators: the struct layouts in result_forge match what zipfile itself reads."""
    data = zip_bytes([("r0.npy", saved(np.arange(3.0)))])
    assert struct.unpack("<4s", data[:4])[0] == b"PK\x03\x04"
    assert parse_npz(data, CAP)[0].tolist() == [0.0, 1.0, 2.0]


def scorer_cases(rng: random.Random, env, state):
    """What a parsed result can hold for this env: arrays of its shapes (and others) with hostile values, or
    JSON test reports of its length with any values."""
    from envs.sandbox import SandboxOutcome

    if env.name in ("code", "arc"):
        n = len(env._state_problem(state).tests) if env.name == "code" else len(env._task_of(state)[1]["test"])
        report = [rng.choice(({"value": json_value(rng)}, {"error": json_value(rng)}, json_value(rng),
                              {"value": [[rng.randint(-2, 12) for _ in range(rng.randint(0, 4))]
                                         for _ in range(rng.randint(0, 4))]})) for _ in range(n)]
        return SandboxOutcome("ok", value=report if rng.random() < 0.9 else json_value(rng))
    values = (0.0, -1.0, 1e308, -1e308, 5e-324, np.nan, np.inf, 0.5, 1.0, 2.0, 3.0, 7.0)
    shapes = [(rng.choice((0, 1, 2, 10, 600)),)]  # a sequence of heights
    if env.name == "circle_packing":
        shapes = [(env.n, 2), (env.n,), ()]
    elif env.name == "tabular":
        from envs.tabular import split_data

        shapes = [(split_data(env.dataset, env.test_fraction, env.split_seed)[2].shape[0],)]
    arrays = []
    for shape in shapes if rng.random() < 0.9 else [random_array(rng).shape]:
        arr = np.array([rng.choice(values) for _ in range(int(np.prod(shape)))]).reshape(shape)
        with np.errstate(all="ignore"):
            arrays.append(arr.astype(rng.choice(("<f8", ">f8", "<f4", "<i8", "|u1", "|b1"))))
    return SandboxOutcome("ok", arrays=arrays[:rng.randint(0, len(arrays))] if rng.random() < 0.1 else arrays)


@pytest.mark.parametrize("name", ["circle_packing", "ac1", "ac2", "erdos", "code", "arc", "tabular"])
def test_every_program_task_scores_any_parsed_result_without_raising(name):
    """The next consumer of the parsed data: each task's scorer answers with a verdict for whatever the parsers
    let through (valid-looking shapes with NaN, inf, 1e308, wrong dtypes; test reports with any values)."""
    import warnings

    from envs.base import VerifyResult
    from envs.registry import make_env

    env = make_env(name, **({"n": 5} if name == "circle_packing" else {}))
    rng = random.Random(f"{SEED}-{name}")
    states = env.initial_states()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # overflow in the scorers' arithmetic: not a failure
        for case in range(250):
            outcome = scorer_cases(rng, env, rng.choice(states))
            try:
                result = env.score_outcome(outcome, rng.choice(states))
            except Exception as e:  # noqa: BLE001
                pytest.fail(f"{name} case {case} (TTT_FUZZ_SEED={SEED}) raised {type(e).__name__}: {e}")
            assert isinstance(result, VerifyResult) and result.status in ("ok", "invalid"), result
