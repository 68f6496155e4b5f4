"""Resolve a model name to a local HF directory; build the embedded tiny model on first use.

`tiny` is a random-weight Qwen2 causal LM (hidden 128, 2 layers, 0.8 M parameters) with a byte-level BPE
tokenizer and a chat template, built locally (nothing is downloaded) into the cache dir and reused.
Real users pass a hub name or a local path instead.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

from inference.model_cache import build_once, cache_dir
from inference.packaged_models import PACKAGED, PackageMissing, ensure_packaged_model, is_packaged

TINY_NAME = "tiny"
TINY_VERSION = "v2"  # bump when the recipe below changes, so stale caches are rebuilt
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


class ModelNotFound(ValueError):
    pass


def resolve_model(name_or_path: str) -> str:
    """'tiny' -> the built tiny model dir; a packaged model's short name (inference/packaged_models.py) -> its
    converted dir; an existing dir -> itself; a hub id -> its cached snapshot or the id.

    Raises ModelNotFound with a one-line message that names the fix.
    """
    if name_or_path == TINY_NAME:
        return str(ensure_tiny_model())
    if is_packaged(name_or_path):
        try:
            return str(ensure_packaged_model(name_or_path))
        except PackageMissing as e:
            raise ModelNotFound(str(e)) from None
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelNotFound(f"model dir {path} has no config.json: pass an HF model dir, a hub name, 'tiny' or a packaged model ({', '.join(_packaged_names())})")
        return str(path)
    looks_like_path = name_or_path.startswith(("/", ".", "~")) or name_or_path.count("/") != 1
    if looks_like_path:
        raise ModelNotFound(f"model path {name_or_path} does not exist: pass an HF model dir, a hub name, 'tiny' or a packaged model ({', '.join(_packaged_names())})")
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(name_or_path, local_files_only=True)
    except Exception:
        if os.environ.get("HF_HUB_OFFLINE") == "1":
            raise ModelNotFound(
                f"model {name_or_path} is not in the local HF cache and HF_HUB_OFFLINE=1: "
                "download it first or pass a local path or 'tiny'"
            ) from None
        return name_or_path  # a hub id: the loaders fetch it


def ensure_tiny_model(root: Path | None = None) -> Path:
    """Build the tiny model once (atomically, under a file lock) and return its directory."""
    return build_once((root or cache_dir() / "models") / f"tiny-{TINY_VERSION}", build_tiny_model)


def _corpus(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    words = ("the a of to and in is it that for on with as was at by be this from or have an are not one "
             "number digit sum value step function height write make list add more less than equal flat "
             "code python return def import circle square packing sequence best score reward model").split()
    lines = []
    for _ in range(n):
        kind = rng.random()
        if kind < 0.4:
            lines.append(" ".join(rng.choice(words) for _ in range(rng.randint(3, 12))))
        elif kind < 0.7:
            a, b = rng.randint(0, 999), rng.randint(0, 999)
            lines.append(f"{a} + {b} = {a + b}, {a} * {b} = {a * b}")
        else:
            lines.append(" ".join(str(rng.randint(0, 9)) * rng.randint(1, 3) for _ in range(rng.randint(4, 16))))
    return lines


def build_tiny_model(out_dir: Path, seed: int = 0) -> None:
    """The recipe of ../shared/docs/PLATFORM.md section 2, plus a chat template and a sharper output head.

    With every weight ~N(0, 0.08) the next-token entropy is 7.2 nats of a possible 7.6 (near uniform over
    2048 tokens), and RL barely moves such a policy in minutes; an unembedding 4x larger gives ~3 nats, a
    policy with preferences that a few policy-gradient steps can reshape.
    """
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    out_dir.mkdir(parents=True, exist_ok=True)
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=2048, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    bpe.train_from_iterator(_corpus(20_000, seed), trainer=trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>", bos_token="<|endoftext|>",
                                  pad_token="<|endoftext|>", model_max_length=2048)
    tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(out_dir)

    eos = tok.convert_tokens_to_ids("<|endoftext|>")
    config = Qwen2Config(vocab_size=len(tok), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                         tie_word_embeddings=False, rope_theta=1e4, bos_token_id=eos, eos_token_id=eos,
                         pad_token_id=eos, torch_dtype="float32")
    gen = torch.Generator().manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:  # a non-trivial distribution, not near-uniform
                p.copy_(torch.randn(p.shape, generator=gen) * 0.08)
        model.lm_head.weight.mul_(4.0)
    model.save_pretrained(out_dir, safe_serialization=True)


def _packaged_names() -> list[str]:
    return sorted(PACKAGED)
