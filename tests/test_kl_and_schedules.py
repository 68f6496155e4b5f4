"""KL-to-base shaping, curriculum promotion and adaptive batch size against hand-computed numbers."""

import numpy as np
import pytest

from trainer.curriculum import Curriculum, next_groups
from trainer.datums import rollout_datum
from trainer.kl import fold_kl_penalty


def test_kl_penalty_matches_hand_computed_values():
    # kl = sampler - base per token: seq 1 [0.5, -1.0, 0.0]; seq 2 [-0.1, (forced, excluded)]
    # avg_kl over the 4 action tokens = (0.5 - 1.0 + 0.0 - 0.1) / 4 = -0.15
    # A_t += 0.1 * (avg_kl - kl_t): 1 + 0.1*(-0.65) = 0.935, 1 + 0.1*0.85 = 1.085, 1 + 0.1*(-0.15) = 0.985,
    # -0.5 + 0.1*(-0.05) = -0.505; the forced token keeps 0.
    shaped, avg_kl = fold_kl_penalty(
        advantages_D=[np.array([1.0, 1.0, 1.0]), np.array([-0.5, -0.5])],
        sampler_logprobs_D=[np.array([-1.0, -2.0, -0.5]), np.array([-0.2, -3.0])],
        base_logprobs_D=[np.array([-1.5, -1.0, -0.5]), np.array([-0.1, -2.0])],
        masks_D=[np.array([1, 1, 1]), np.array([1, 0])], coef=0.1)
    assert avg_kl == pytest.approx(-0.15, abs=1e-12)
    np.testing.assert_allclose(shaped[0], [0.935, 1.085, 0.985], atol=1e-12)
    np.testing.assert_allclose(shaped[1], [-0.505, 0.0], atol=1e-12)


def test_kl_penalty_with_zero_coef_changes_nothing():
    adv = [np.array([0.3, 0.3])]
    shaped, _ = fold_kl_penalty(adv, [np.array([-1.0, -2.0])], [np.array([-3.0, -0.5])], [np.array([1, 1])], 0.0)
    np.testing.assert_array_equal(shaped[0], adv[0])


def test_per_token_advantages_reach_the_datum():
    datum = rollout_datum([5, 6, 7], [8, 9], [-0.5, -0.25], [0.7, -0.2], mask=[1, 1])
    assert datum.loss_fn_inputs["advantages"].data == pytest.approx([0.0, 0.0, 0.7, -0.2])
    with pytest.raises(ValueError, match="2 completion tokens but 3 advantages"):
        rollout_datum([5, 6], [8, 9], [-0.5, -0.25], [0.1, 0.2, 0.3])


def test_curriculum_promotes_on_valid_rate_and_reward_and_stops_at_the_last_instance():
    c = Curriculum([{"n": 10}, {"n": 26}], promote_valid_rate=0.5, promote_reward=2.0)
    assert not c.record_step(0, valid=3, rollouts=8, reward_sum=4.0, best=2.5)  # 0.375 < 0.5
    assert not c.record_step(1, valid=4, rollouts=8, reward_sum=4.0, best=1.5)  # reward 1.5 < 2.0
    assert c.record_step(2, valid=4, rollouts=8, reward_sum=4.0, best=2.0)
    assert c.current == 1 and c.stats[0].promoted_at_step == 2
    assert c.stats[0].valid_rate == pytest.approx(11 / 24) and c.stats[0].best_reward == 2.5
    assert not c.record_step(3, valid=8, rollouts=8, reward_sum=8.0, best=9.0)  # nothing after the last
    restored = Curriculum([{"n": 10}, {"n": 26}])
    restored.restore(c.to_dict())
    assert restored.current == 1 and restored.stats[0].rollouts == 24


@pytest.mark.parametrize("groups, valid_rate, rollouts, expected", [
    (8, 0.5, 64, 8),    # on target
    (8, 0.25, 64, 16),  # half the target: twice the groups
    (8, 1.0, 64, 4),
    (8, 0.0, 64, 32),   # none valid: counted as 1/64 -> 256, clipped to max 32
    (2, 1.0, 16, 2),    # 1 -> clipped to min 2
])
def test_adaptive_batch(groups, valid_rate, rollouts, expected):
    assert next_groups(groups, valid_rate, 0.5, 2, 32, rollouts) == expected


def test_best_json_at_every_improvement_and_the_picture_at_most_every_interval(tmp_path, monkeypatch):
    import json

    import envs.render
    from trainer.metrics import BestWriter

    drawn = []
    monkeypatch.setattr(envs.render, "draw_construction", lambda env, c, title, path: drawn.append((c, title)))
    writer = BestWriter(tmp_path, "toy", picture_every_s=3600)
    for step, score in enumerate([1.0, 2.0, 3.0]):
        writer.write({"score": score, "step": step, "construction": [score]}, env=None)
        assert json.loads((tmp_path / "best.json").read_text())["score"] == score
    assert [c for c, _ in drawn] == [[1.0]]  # the first improvement is drawn, the next two wait
    writer.flush()
    assert [c for c, _ in drawn] == [[1.0], [3.0]] and "step 2" in drawn[-1][1]  # the latest, once
    writer.flush()
    assert len(drawn) == 2
    every = BestWriter(tmp_path, "toy", picture_every_s=0)
    every.write({"score": 4.0, "step": 3, "construction": [4.0]}, env=None)
    every.write({"score": 5.0, "step": 4, "construction": None}, env=None)  # nothing to draw
    assert [c for c, _ in drawn] == [[1.0], [3.0], [4.0]]
