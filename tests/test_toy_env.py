"""The toy task's verifier against hand-computed C1 values, and the Ray pool against the in-process one."""

import pytest

from envs.base import State
from envs.pool import VerifierPool
from envs.toy_digits import ToyDigitsEnv, autocorrelation_c1


def test_c1_hand_values():
    assert autocorrelation_c1([5, 5, 5, 5]) == pytest.approx(2.0)  # flat: n*h^2 peak -> 2n*n*h^2/(n*h)^2
    assert autocorrelation_c1([1, 0, 1]) == pytest.approx(3.0)  # conv 1,0,2,0,1: 2*3*2/2^2
    assert autocorrelation_c1([1, 2]) == pytest.approx(16 / 9)  # conv 1,4,4: 2*2*4/3^2


def test_rewards_and_statuses():
    env = ToyDigitsEnv(length=4)
    ok = env.evaluate("x 12 y 21 tail 99", State())
    assert ok.status == "ok" and ok.construction == [1, 2, 2, 1]
    # conv(1,2,2,1) = 1,4,8,10,8,4,1 -> C1 = 2*4*10/36
    assert ok.score == pytest.approx(80 / 36) and ok.reward == pytest.approx(2 / (80 / 36))
    assert ok.value == pytest.approx(-80 / 36)
    partial = env.evaluate("1 2 words", State())
    assert partial.status == "invalid" and partial.reward == pytest.approx(0.5 * 2 / (16 / 9))
    assert env.evaluate("no digits here", State()).status == "format_error"
    zeros = env.evaluate("0000", State())
    assert zeros.status == "invalid" and zeros.reward == 0.0


def test_strict_format_counts_only_the_first_characters():
    env = ToyDigitsEnv(length=4, strict=True)
    assert env.evaluate("1 2 3 4", State()).construction == [1, 2]
    assert env.evaluate("1234", State()).status == "ok"


def test_ray_pool_matches_local_in_order():
    env = ToyDigitsEnv(length=6)
    completions = ["123456", "99", "abc", "000000", "314159 26", "1 1 1 1 1 1"]
    states = [State()] * len(completions)
    local = VerifierPool(env, backend="local").evaluate(completions, states)
    remote = VerifierPool(env, backend="ray", num_cpus=2).evaluate(completions, states)
    assert [(r.status, r.reward) for r in remote] == [(r.status, r.reward) for r in local]
    assert [r.status for r in local] == ["ok", "invalid", "format_error", "invalid", "ok", "ok"]
