"""Where a run's numbers go: metrics.jsonl (append-only), a console table, a learning-curve PNG."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

COLUMNS = [  # (key, header, format)
    ("step", "step", "{:>4d}"),
    ("reward_mean", "reward_mean", "{:>11.4f}"),
    ("reward_max", "reward_max", "{:>10.4f}"),
    ("best_reward", "best", "{:>7.4f}"),
    ("valid_rate", "valid", "{:>6.2f}"),
    ("frac_mixed", "mixed", "{:>6.2f}"),
    ("buffer_size", "buffer", "{:>6d}"),
    ("adapter_version", "adapter", "{:>7d}"),
    ("mismatch_max", "|dlogp|max", "{:>10.2e}"),
    ("t_sample", "sample_s", "{:>8.2f}"),
    ("t_verify", "verify_s", "{:>8.2f}"),
    ("t_train", "train_s", "{:>7.2f}"),
    ("t_swap", "swap_s", "{:>6.2f}"),
]


def table_header() -> str:
    return "  ".join(f"{h:>{len(f.format(0) if 'd' in f else f.format(0.0))}}" for _, h, f in COLUMNS)


def table_row(metrics: dict) -> str:
    cells = []
    for key, header, fmt in COLUMNS:
        value = metrics.get(key)
        width = len(fmt.format(0) if "d" in fmt else fmt.format(0.0))
        if value is None or (isinstance(value, float) and math.isnan(value)):
            cells.append(f"{'-':>{width}}")
        else:
            cells.append(fmt.format(value))
    return "  ".join(cells)


def append_jsonl(path: Path, record: dict) -> None:
    """One line per record, flushed and fsynced so a killed run loses no completed step."""
    try:
        with open(path, "a") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        if e.filename is None:  # a failed write names no file; the error line should (on resume the partial
            e.filename = str(path)  # line it may have left is cut)
        raise


def read_jsonl(path: Path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def plot_curves(records: list[dict], png_path: Path, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [{k: (math.nan if v is None else v) for k, v in r.items()} for r in records]
    steps = [r["step"] for r in records]
    fig, (ax_r, ax_v) = plt.subplots(1, 2, figsize=(10, 3.6))
    ax_r.plot(steps, [r["reward_mean"] for r in records], marker="o", label="mean reward")
    ax_r.plot(steps, [r["reward_max"] for r in records], marker=".", alpha=0.6, label="max reward")
    ax_r.plot(steps, [r["best_reward"] for r in records], linestyle="--", label="best so far")
    ax_r.set_xlabel("step")
    ax_r.set_ylabel("reward")
    ax_r.legend()
    ax_v.plot(steps, [r["valid_rate"] for r in records], marker="o", color="tab:green")
    ax_v.set_ylim(-0.05, 1.05)
    ax_v.set_xlabel("step")
    ax_v.set_ylabel("valid rate")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
