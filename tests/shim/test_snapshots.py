"""A loop saves sampler weights every step: the engine keeps only the newest snapshots of a model on disk, and
a retired sampling client gets a clear error instead of a missing-file failure deep in the sampler."""

from pathlib import Path

import pytest
from tinker import types

from shim.factory import make_service_client


def test_old_sampler_snapshots_are_retired(hf_engine):
    service = make_service_client("local", engine=hf_engine)
    training = service.create_lora_training_client(base_model="tiny", rank=4, seed=0).result()
    clients = [training.save_weights_and_get_sampling_client().result() for _ in range(hf_engine.keep_snapshots + 2)]
    dirs = [Path(hf_engine.sampling_session(c.sampling_session_id)[1].adapter_dir) for c in clients[2:]]
    assert all(d.is_dir() for d in dirs)
    prompt = types.ModelInput.from_ints([1, 87, 85, 71])
    params = types.SamplingParams(max_tokens=3, seed=0)
    with pytest.raises(ValueError, match="was retired: only the newest 4 sampler snapshots"):
        clients[0].sample(prompt, 1, params).result()
    assert len(clients[-1].sample(prompt, 2, params).result().sequences) == 2
    scratch = dirs[0].parent
    assert sorted(p.name for p in scratch.glob("ephemeral-*")) == sorted(d.name for d in dirs)
    service.close()
