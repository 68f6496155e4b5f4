import os
import tempfile

import pytest

# Offline and quiet everywhere; Ray without auth tokens and with short socket paths.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_TMPDIR", os.path.join(tempfile.gettempdir(), f"ray_{os.getuid()}"))
os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


@pytest.fixture(scope="session")
def tiny_model_path() -> str:
    from inference.models import ensure_tiny_model

    return str(ensure_tiny_model())


@pytest.fixture(scope="session")
def vllm_sampler(tiny_model_path):
    """One real vLLM engine for the whole test run (start-up is ~30-60 s on 2 cores)."""
    from inference.vllm_sampler import VLLMSampler

    sampler = VLLMSampler(tiny_model_path, max_lora_rank=8, seed=0)
    yield sampler
    sampler.close()


@pytest.fixture()
def learner(tiny_model_path):
    """A LoRA learner (rank 4) with B ~ N(0, 0.05): a non-trivial adapter, so every LoRA matrix gets a gradient."""
    import torch

    from trainer.learner import LoRALearner, LoraSpec

    learner = LoRALearner(tiny_model_path, LoraSpec(rank=4, seed=3))
    with torch.no_grad():
        g = torch.Generator().manual_seed(0)
        for name, p in learner.model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return learner
