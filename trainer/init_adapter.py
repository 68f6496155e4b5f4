"""`init_adapter=PATH`: an RL run whose learner starts from the weights of an SFT adapter (`ttt sft`), with a
fresh optimizer; the loop's first sampler then serves those weights at step 0.

PATH is one of
  - the out dir of `ttt sft` (its adapter.json names the saved state),
  - a learner state dir (state.json + state.safetensors: the SFT run's out/tinker/.../weights/sft, or a loop
    checkpoint's training state),
  - a tinker:// path of a save_state checkpoint on the server the run talks to (backend=tinker).
With backend=local the state dir is copied into the run's own checkpoint root (out/tinker) and loaded through
the client API (create_training_client_from_state), so the run no longer needs the SFT dir, and a resumed run
loads its own checkpoints, never the init adapter again.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from trainer.sft import ADAPTER_FILE

IMPORT_MODEL_ID, IMPORT_NAME = "init_adapter", "init"  # where a local state dir is copied in the run's store


@dataclass(frozen=True)
class InitAdapter:
    given: str  # what the user passed, for messages
    state_dir: Path | None  # a local learner state dir
    tinker_path: str | None  # a save_state checkpoint on a Tinker server


def locate(given: str) -> InitAdapter:
    """What PATH points at; ValueError naming the fix otherwise."""
    if given.startswith("tinker://"):
        return InitAdapter(given, None, given)
    path = Path(given).expanduser()
    if (path / ADAPTER_FILE).is_file():
        sft = json.loads((path / ADAPTER_FILE).read_text())
        local = sft.get("local_state_dir")  # backend=local: its tinker:// path names our engine's store only
        return InitAdapter(given, (path / local) if local else None,
                           sft.get("state_path") if sft.get("backend") == "tinker" else None)
    if (path / "state.json").is_file():
        return InitAdapter(given, path, None)
    if not path.exists():
        raise ValueError(f"init_adapter {given} does not exist: pass the out dir of `ttt sft`")
    raise ValueError(f"init_adapter {given} is neither a `ttt sft` out dir ({ADAPTER_FILE}), a learner state dir "
                     "(state.json) nor a tinker:// path: pass the out dir of `ttt sft`")


def check(cfg) -> InitAdapter | None:
    """The adapter fits the run (backend, base model, LoRA shape), checked before anything starts. None when
    the run resumes from its own checkpoint: the adapter is not needed any more (it may even be gone)."""
    if cfg.resume and (Path(cfg.out) / "checkpoints" / "latest").exists():
        return None
    if not cfg.trains:
        raise ValueError(f"init_adapter needs a training mode (mode=train or expert_iteration), got mode={cfg.mode}")
    found = locate(cfg.init_adapter)
    if cfg.backend == "tinker":
        if found.tinker_path is None:
            raise ValueError(f"init_adapter {found.given} was trained with backend=local and lives on this machine "
                             "only: run with backend=local, or train the adapter with `ttt sft ... backend=tinker`")
        return found
    if found.state_dir is None:
        raise ValueError(f"init_adapter {found.given} is a checkpoint on a Tinker server ({found.tinker_path}): run "
                         "with backend=tinker base_url=<that server>, or pass a local `ttt sft` out dir")
    if not (found.state_dir / "state.json").is_file():
        raise ValueError(f"init_adapter {found.given}: its state dir {found.state_dir} is missing; was the SFT run "
                         "moved without its tinker/ dir?")
    _check_shape(cfg, found)
    return found


def _check_shape(cfg, found: InitAdapter) -> None:
    from inference.models import resolve_model

    meta = json.loads((found.state_dir / "state.json").read_text())
    lora = meta["lora"]
    if lora["rank"] != cfg.lora_rank:
        raise ValueError(f"init_adapter {found.given} has LoRA rank {lora['rank']}, the run lora_rank="
                         f"{cfg.lora_rank}: pass lora_rank={lora['rank']}")
    for name in ("train_attn", "train_mlp", "train_unembed"):
        if bool(lora[name]) != bool(getattr(cfg, name)):
            raise ValueError(f"init_adapter {found.given} has {name}={lora[name]}, the run {name}="
                             f"{getattr(cfg, name)}: pass {name}={str(lora[name]).lower()}")
    if Path(meta["base_model"]).resolve() != Path(resolve_model(cfg.base_model)).resolve():
        raise ValueError(f"init_adapter {found.given} was trained on {meta['base_model']}, the run's base_model is "
                         f"{cfg.base_model}: pass the base_model the adapter was trained on")


def training_client(service, cfg):
    """A TrainingClient holding the adapter's weights and a fresh optimizer (weights only, as Tinker's
    create_training_client_from_state)."""
    found = check(cfg) or locate(cfg.init_adapter)
    path = found.tinker_path if cfg.backend == "tinker" else _import_state(service, found.state_dir)
    return service.create_training_client_from_state(path).result()


def _import_state(service, state_dir: Path) -> str:
    """Copy a local state dir into the engine's checkpoint store; -> its tinker:// path there."""
    ref = service.engine.store.ref(IMPORT_MODEL_ID, "weights", IMPORT_NAME)
    if ref.directory.exists():  # a fresh start after a run that died before its first checkpoint
        shutil.rmtree(ref.directory)
    shutil.copytree(state_dir, ref.directory)
    return ref.tinker_path
