"""Draw a construction to PNG: circles in the square, a step function with its autoconvolution, ARC grids.

Programs are run through the env (the same sandbox as training) to get their construction; JSON files are
read as in `ttt verify`. Drawing uses matplotlib's Agg backend (no display needed).
"""

from __future__ import annotations

import json

import numpy as np

from envs.base import State
from envs.user_input import InputError, read_input, verify_construction

ARC_COLOURS = ["#000000", "#0074D9", "#FF4136", "#2ECC40", "#FFDC00", "#AAAAAA", "#F012BE", "#FF851B", "#7FDBFF",
               "#870C25"]


def _construction(env, args):
    """(construction, VerifyResult) from a program or a JSON file."""
    text = read_input(args.path)
    if args.path.endswith(".json"):
        try:
            data = json.loads(text)
        except ValueError as e:
            raise InputError(f"{args.path} is not valid JSON ({e})") from None
        if env.name == "arc":
            return data, None
        result = verify_construction(env, data)
    else:
        result = env.verify(text, State(task_id=args.task or ""))
    if result.construction is None:
        raise InputError(f"nothing to draw: the program's status is {result.status} ({result.message[:200]})")
    return result.construction, result


def _figure(rows: int, cols: int, size: tuple[float, float]):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(rows, cols, figsize=size, squeeze=False)
    return plt, fig, axes


def draw_packing(construction: dict, title: str, out: str) -> None:
    centers = np.asarray(construction["centers"], dtype=np.float64)
    radii = np.asarray(construction["radii"], dtype=np.float64)
    plt, fig, axes = _figure(1, 1, (6, 6))
    ax = axes[0][0]
    ax.add_patch(plt.Rectangle((0, 0), 1, 1, fill=False, lw=1.5, color="black"))
    for i, ((x, y), r) in enumerate(zip(centers, radii)):
        if np.isfinite([x, y, r]).all() and r >= 0:
            ax.add_patch(plt.Circle((x, y), r, alpha=0.45, ec="navy", fc="tab:blue"))
            ax.text(x, y, str(i), ha="center", va="center", fontsize=7)
    ax.set_xlim(-0.02, 1.02), ax.set_ylim(-0.02, 1.02), ax.set_aspect("equal"), ax.set_title(title)
    fig.savefig(out, dpi=120, bbox_inches="tight")
    plt.close(fig)


def draw_step_function(heights, title: str, out: str, overlap: bool = False) -> None:
    h = np.asarray(heights, dtype=np.float64)
    plt, fig, axes = _figure(2, 1, (8, 6))
    axes[0][0].stairs(h, np.linspace(0, 1, h.size + 1), fill=True, alpha=0.6)
    axes[0][0].set_title(title)
    axes[0][0].set_ylabel("f (step heights)")
    finite = np.where(np.isfinite(h), h, 0.0)
    if overlap:  # Erdős: the overlap function whose maximum is C5
        curve, label = np.correlate(finite, 1.0 - finite, "full") * 2.0 / max(h.size, 1), "correlate(h, 1 - h) * 2/n"
    else:
        curve, label = np.convolve(finite, finite), "f * f (autoconvolution)"
    axes[1][0].plot(np.linspace(0, 1, curve.size), curve, lw=1)
    axes[1][0].axhline(curve.max(), ls="--", lw=0.8, color="red")
    axes[1][0].set_ylabel(label)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def draw_program(program: str, title: str, out: str, max_lines: int = 60) -> None:
    """A program as a picture: its first `max_lines` lines in a monospace font under the title."""
    lines = program.expandtabs(4).splitlines() or [""]
    if len(lines) > max_lines:
        lines = lines[:max_lines] + [f"# ... ({len(lines) - max_lines} more lines)"]
    width = min(max(len(line) for line in lines), 120)
    plt, fig, axes = _figure(1, 1, (max(6.0, 0.085 * width + 1), 0.19 * len(lines) + 1.0))
    ax = axes[0][0]
    ax.axis("off")
    ax.set_title(title, fontsize=10, loc="left")
    ax.text(0, 1, "\n".join(line[:120] for line in lines), family="monospace", fontsize=9, va="top", ha="left",
            transform=ax.transAxes)
    fig.savefig(out, dpi=110, bbox_inches="tight")
    plt.close(fig)


def draw_arc(task: dict, predictions: list | None, title: str, out: str) -> None:
    from matplotlib.colors import ListedColormap

    rows = [(f"train {i + 1}", p["input"], p["output"], None) for i, p in enumerate(task["train"])]
    for i, p in enumerate(task["test"]):
        pred = predictions[i] if predictions and i < len(predictions) else None
        rows.append((f"test {i + 1}", p["input"], p["output"], pred))
    plt, fig, axes = _figure(len(rows), 3, (9, 3 * len(rows)))
    cmap = ListedColormap(ARC_COLOURS)
    for r, (name, grid_in, grid_out, pred) in enumerate(rows):
        for c, (label, grid) in enumerate(((f"{name} input", grid_in), (f"{name} output", grid_out),
                                           ("prediction", pred))):
            ax = axes[r][c]
            ax.set_xticks([]), ax.set_yticks([])
            if grid is not None:
                ax.imshow(np.asarray(grid), cmap=cmap, vmin=0, vmax=9)
                ax.set_title(label, fontsize=9)
            else:
                ax.axis("off")
    fig.suptitle(title)
    fig.savefig(out, dpi=100, bbox_inches="tight")
    plt.close(fig)


def draw_construction(env, construction, label: str, out: str, task_id: str = "") -> None:
    """Draw one construction of `env` into `out` (PNG); ValueError if this env has nothing to draw."""
    if env.name == "circle_packing":
        draw_packing(construction, label, out)
    elif env.name in ("ac1", "ac2", "erdos", "toy_digits"):
        draw_step_function(construction, label, out, overlap=env.name == "erdos")
    elif env.name == "arc":
        named = construction.get("task_id") if isinstance(construction, dict) else None
        task_id = named or task_id or env.task_ids[0]
        predictions = construction.get("predictions") if isinstance(construction, dict) else None
        draw_arc(env.task(task_id), predictions, label, out)
    else:
        raise InputError(f"env {env.name} has nothing to draw")


def render(env, args, out: str) -> dict:
    """Draw `args.path` for `env` into `out`; returns {"score", "message"}."""
    construction, result = _construction(env, args)
    score = None if result is None else result.score
    status = "" if result is None else f"{result.status}"
    label = f"{env.name}: {status} score={score if score is not None else '-'}"
    draw_construction(env, construction, label, out, task_id=args.task or "")
    return {"score": score, "message": "" if result is None else result.message}
