"""The named experiments carry the numbers TTT_DISCOVER.md gives for the paper and the seeds' runs, and
overrides compose the way the README says."""

import pytest

from trainer.config import compose


def test_paper_preset_has_the_papers_numbers():
    cfg = compose(["+experiment=paper", "backend=tinker"])  # on Tinker's cloud: no local weights needed
    assert cfg.base_model == "openai/gpt-oss-120b" and cfg.lora_rank == 32
    assert (cfg.learning_rate, cfg.adam_beta1, cfg.adam_beta2, cfg.adam_eps) == (4e-5, 0.9, 0.95, 1e-8)
    assert (cfg.groups, cfg.group_size, cfg.steps, cfg.temperature) == (8, 64, 50, 1.0)
    assert (cfg.advantage, cfg.loss_fn, cfg.kl_coef) == ("entropic_adaptive_beta", "importance_sampling", 0.1)
    assert (cfg.state_sampler, cfg.puct_c, cfg.topk_children, cfg.max_buffer_size) == ("puct", 1.0, 2, 1000)
    assert (cfg.thinking_budget, cfg.max_model_len) == (26000, 32768)
    assert cfg.thinking_budget + cfg.final_budget == 32768 - 50
    assert cfg.env_name == "cp26" and cfg.env["n"] == 26
    assert compose(["+experiment=paper", "backend=tinker", "env=ac1"]).env_name == "ac1"


@pytest.mark.parametrize("name, env", [("seeds_cp26", "cp26"), ("seeds_ac1", "ac1")])
def test_seeds_runs_are_8_by_8(name, env):
    cfg = compose([f"+experiment={name}", "model=tiny"])
    assert (cfg.groups, cfg.group_size, cfg.env_name, cfg.state_sampler) == (8, 8, env, "puct")


def test_mle_greedy_preset():
    cfg = compose(["+experiment=seeds_mle_greedy", "model=tiny"])
    assert (cfg.state_sampler, cfg.epsilon, cfg.advantage, cfg.advantage_beta) == ("greedy", 0.125, "entropic", 2.0)
    assert cfg.env_name == "tabular"


def test_model_path_and_free_form_dicts():
    cfg = compose(["model=tiny", "env.length=6", "sampler_args.enforce_eager=true", "learner_args.packing=false"])
    assert cfg.env["length"] == 6 and cfg.sampler_args == {"enforce_eager": True}
    assert cfg.learner_args == {"packing": False}
    custom = compose(["model=Org/Some-Model", "backend=tinker"])
    assert custom.base_model == "Org/Some-Model" and custom.lora_rank == 32 and custom.on_mismatch == "warn"
