"""A user's input file for `ttt verify` and `ttt render`: read it (bounded, UTF-8) and verify a construction
given as JSON with the same checks as the program path. Bad input raises InputError, one line.
"""

from __future__ import annotations

from typing import Any

from envs.base import VerifyResult

MAX_INPUT_BYTES = 64 << 20


class InputError(ValueError):
    """Bad command-line input; reported as one error record."""


def read_input(path: str) -> str:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_INPUT_BYTES + 1)
    except OSError as e:
        raise InputError(f"cannot read {path}: {e.strerror or e}") from None
    if len(data) > MAX_INPUT_BYTES:
        raise InputError(f"{path} is larger than {MAX_INPUT_BYTES >> 20} MiB")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{path} is not UTF-8 text") from None


def _pick(data: Any, *keys: str) -> Any:
    if isinstance(data, dict):
        for key in keys:
            if key in data:
                return data[key]
        raise InputError(f"the JSON object needs one of the keys {', '.join(keys)}")
    return data


def verify_construction(env, data: Any) -> VerifyResult:
    """Verify a construction loaded from JSON with the same checks the program path uses."""
    import numpy as np

    try:
        if env.name == "circle_packing":
            if isinstance(data, dict) and "circles" not in data:
                centers, radii = _pick(data, "centers"), _pick(data, "radii")
            else:  # [[x, y, r], ...] as in the AlphaEvolve results, or TTT-Discover's {"circles": rows}
                rows = np.asarray(_pick(data, "circles"), dtype=np.float64)
                if rows.ndim != 2 or rows.shape[1] != 3:
                    raise InputError(f"expected {{'centers', 'radii'}} or rows of [x, y, r], got shape {rows.shape}")
                centers, radii = rows[:, :2], rows[:, 2]
            return env.verify_construction(np.asarray(centers, dtype=np.float64), np.asarray(radii, dtype=np.float64))
        if env.name in ("ac1", "ac2"):
            return env.verify_construction(np.asarray(_pick(data, "heights", "sequence", "values"), dtype=np.float64))
        if env.name == "erdos":
            return env.verify_construction(np.asarray(_pick(data, "h_values", "heights", "sequence", "values"),
                                                      dtype=np.float64))
        if env.name == "tabular":
            return env.verify_predictions(np.asarray(_pick(data, "predictions"), dtype=np.float64))
    except (TypeError, ValueError) as e:
        if isinstance(e, InputError):
            raise
        raise InputError(f"the construction is not numeric data of the right form ({e})") from None
    raise InputError(f"env {env.name} verifies programs (.py), not construction files")
