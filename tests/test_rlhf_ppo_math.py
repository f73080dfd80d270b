"""PPO arithmetic (`t5x_lite.rlhf.ppo_math`) against slow NumPy / pure-Python references:
masked statistics and whitening, KL estimators, per-token rewards, GAE, the clipped policy and
value losses, entropy, explained variance and the KL coefficient controller, under jax.jit."""
import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import assume, given, settings, strategies as st

from t5x_lite.rlhf import ppo_math

PROPERTY = settings(max_examples=30, deadline=None)


def prefix_mask(lengths, length):
    """[B, L] float mask with `lengths[i]` leading ones in row i."""
    return (np.arange(length)[None, :] < np.asarray(lengths)[:, None]).astype(np.float32)


@st.composite
def batches(draw, min_real=0):
    """(seed, lengths, length): a batch of 1-4 rows of length 1-9 with per-row real lengths."""
    batch = draw(st.integers(1, 4))
    length = draw(st.integers(1, 9))
    lengths = draw(st.lists(st.integers(0, length), min_size=batch, max_size=batch))
    assume(sum(lengths) >= min_real)
    return draw(st.integers(0, 2**31 - 1)), lengths, length


# ------------------------------------------------------------------------------------------
# Masked statistics and whitening.
# ------------------------------------------------------------------------------------------


def numpy_whiten(x, mask, shift_mean=True):
    real = np.asarray(x, np.float64)[np.asarray(mask) > 0]
    mean, var = real.mean(), real.var(ddof=1)
    out = (np.asarray(x, np.float64) - mean) / np.sqrt(var + 1e-8)
    return out + (0.0 if shift_mean else mean)


def test_masked_mean_and_var_match_numpy_over_real_entries():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 6)).astype(np.float32)
    mask = prefix_mask([6, 2, 4], 6)
    real = x[mask > 0].astype(np.float64)
    np.testing.assert_allclose(ppo_math.masked_mean(x, mask), real.mean(), rtol=1e-6)
    np.testing.assert_allclose(ppo_math.masked_var(x, mask), real.var(ddof=1), rtol=1e-5)
    np.testing.assert_allclose(ppo_math.masked_var(x, mask, unbiased=False), real.var(), rtol=1e-5)
    rows = [x[i, : n].mean() for i, n in enumerate([6, 2, 4])]
    np.testing.assert_allclose(ppo_math.masked_mean(x, mask, axis=-1), rows, rtol=1e-6)
    bool_mask = jnp.asarray(mask, bool)
    np.testing.assert_allclose(ppo_math.masked_mean(x, bool_mask), real.mean(), rtol=1e-6)


def test_masked_mean_of_empty_mask_is_zero_not_nan():
    x = jnp.ones((2, 3))
    mask = prefix_mask([0, 2], 3)
    np.testing.assert_array_equal(ppo_math.masked_mean(x, mask, axis=-1), [0.0, 1.0])
    assert ppo_math.masked_mean(x, np.zeros((2, 3))) == 0.0
    assert ppo_math.masked_var(x, prefix_mask([1, 0], 3)) == 0.0


@PROPERTY
@given(batches(min_real=2), st.booleans())
def test_masked_whiten_matches_numpy_and_ignores_padding(case, shift_mean):
    seed, lengths, length = case
    rng = np.random.default_rng(seed)
    x = (rng.normal(size=(len(lengths), length)) * 3.0 + 1.5).astype(np.float32)
    mask = prefix_mask(lengths, length)
    whitened = np.asarray(ppo_math.masked_whiten(x, mask, shift_mean=shift_mean))
    expected = numpy_whiten(x, mask, shift_mean)
    real = mask > 0
    np.testing.assert_allclose(whitened[real], expected[real], rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(whitened[~real], 0.0)
    if shift_mean and real.sum() > 1 and x[real].std() > 1e-2:
        assert abs(whitened[real].mean()) < 1e-4
        np.testing.assert_allclose(whitened[real].var(ddof=1), 1.0, rtol=1e-3)
    # Padding values never matter.
    garbage = np.where(real, x, rng.normal(size=x.shape) * 1e3).astype(np.float32)
    np.testing.assert_array_equal(ppo_math.masked_whiten(garbage, mask, shift_mean), whitened)


# ------------------------------------------------------------------------------------------
# KL estimators and per-token rewards.
# ------------------------------------------------------------------------------------------


def test_kl_estimator_values():
    logprobs = np.array([[-1.0, -2.0, -0.5]], np.float32)
    ref = np.array([[-1.5, -1.0, -0.5]], np.float32)
    np.testing.assert_allclose(ppo_math.kl_penalty(logprobs, ref), [[0.5, -1.0, 0.0]])
    np.testing.assert_allclose(ppo_math.kl_penalty(logprobs, ref, "k1"), [[0.5, -1.0, 0.0]])
    l = ref.astype(np.float64) - logprobs
    np.testing.assert_allclose(ppo_math.kl_penalty(logprobs, ref, "k3"), np.expm1(l) - l, rtol=1e-6)
    np.testing.assert_allclose(
        ppo_math.kl_penalty(logprobs, ref, "k3"),
        [[math.exp(-0.5) - 1 + 0.5, math.exp(1.0) - 1 - 1.0, 0.0]], rtol=1e-6)
    with pytest.raises(ValueError, match="unknown KL estimator 'kl'"):
        ppo_math.kl_penalty(logprobs, ref, "kl")


@PROPERTY
@given(st.lists(st.floats(-20, 0), min_size=1, max_size=8),
       st.lists(st.floats(-20, 0), min_size=1, max_size=8))
def test_k3_is_never_negative(logprobs, ref):
    n = min(len(logprobs), len(ref))
    kl = ppo_math.kl_penalty(jnp.asarray(logprobs[:n]), jnp.asarray(ref[:n]), "k3")
    assert np.all(np.asarray(kl) >= 0.0)


@pytest.mark.parametrize("difference", [1e-3, -1e-3, 1e-2, -2e-2])
def test_k3_is_half_k1_squared_for_small_differences(difference):
    logprobs = jnp.full((1, 2), -2.0)
    ref = logprobs - difference
    k1 = ppo_math.kl_penalty(logprobs, ref, "k1")
    k3 = ppo_math.kl_penalty(logprobs, ref, "k3")
    np.testing.assert_allclose(k1, difference, rtol=1e-3)
    # (e^l - 1) - l = l²/2 + l³/6 + ...: relative error ~|l|/3.
    np.testing.assert_allclose(k3, np.square(k1) / 2, rtol=abs(difference))


def test_token_rewards_put_the_score_at_eos_and_nothing_after():
    lengths = [5, 2, 0, 1]
    length = 5
    mask = prefix_mask(lengths, length)
    rng = np.random.default_rng(1)
    logprobs = rng.normal(size=mask.shape).astype(np.float32) - 2
    ref = rng.normal(size=mask.shape).astype(np.float32) - 2
    score = np.array([1.5, -2.0, 7.0, 0.25], np.float32)
    beta = 0.1
    rewards, kl = ppo_math.token_rewards(score, logprobs, ref, mask, beta)
    rewards, kl = np.asarray(rewards), np.asarray(kl)
    for row, n in enumerate(lengths):
        expected_kl = np.where(np.arange(length) < n, logprobs[row] - ref[row], 0.0)
        np.testing.assert_allclose(kl[row], expected_kl, rtol=1e-6)
        expected = -beta * expected_kl
        if n:
            expected[n - 1] += score[row]
        np.testing.assert_allclose(rewards[row], expected, rtol=1e-6, atol=1e-7)
        np.testing.assert_array_equal(rewards[row, n:], 0.0)
    # The row with no real token gets no score at all; the last position of the full row does.
    assert rewards[2].sum() == 0.0
    np.testing.assert_allclose(rewards[0, 4], score[0] - beta * kl[0, 4], rtol=1e-6)
    # Summed over a row: score − β·KL(sequence).
    np.testing.assert_allclose(rewards.sum(-1), score * (np.array(lengths) > 0) - beta * kl.sum(-1),
                               rtol=1e-5)


def test_token_rewards_with_k3_and_traced_beta():
    mask = prefix_mask([3, 1], 4)
    logprobs = jnp.full((2, 4), -1.0)
    ref = jnp.full((2, 4), -1.2)
    run = jax.jit(ppo_math.token_rewards, static_argnames="estimator")
    rewards, kl = run(jnp.zeros(2), logprobs, ref, mask, jnp.float32(0.5), estimator="k3")
    k3 = math.expm1(-0.2) + 0.2
    np.testing.assert_allclose(kl, mask * k3, rtol=1e-5)
    np.testing.assert_allclose(rewards, -0.5 * mask * k3, rtol=1e-5)


# ------------------------------------------------------------------------------------------
# GAE.
# ------------------------------------------------------------------------------------------


def slow_gae(rewards, values, mask, gamma, lam):
    """Double loop over rows and reversed time; episodes end at each row's last real token."""
    batch, length = rewards.shape
    advantages = np.zeros((batch, length))
    returns = np.zeros((batch, length))
    for b in range(batch):
        n = int(mask[b].sum())
        next_advantage, next_value = 0.0, 0.0
        for t in reversed(range(n)):
            delta = rewards[b, t] + gamma * next_value - values[b, t]
            next_advantage = delta + gamma * lam * next_advantage
            next_value = values[b, t]
            advantages[b, t] = next_advantage
            returns[b, t] = next_advantage + values[b, t]
    return advantages, returns


@PROPERTY
@given(batches(), st.floats(0.0, 1.0), st.floats(0.0, 1.0))
def test_gae_matches_a_slow_double_loop(case, gamma, lam):
    seed, lengths, length = case
    rng = np.random.default_rng(seed)
    shape = (len(lengths), length)
    mask = prefix_mask(lengths, length)
    rewards = rng.normal(size=shape).astype(np.float32)
    values = rng.normal(size=shape).astype(np.float32)
    expected_adv, expected_ret = slow_gae(rewards, values, mask, gamma, lam)
    advantages, returns = ppo_math.gae(rewards, values, mask, gamma, lam)
    np.testing.assert_allclose(advantages, expected_adv, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(returns, expected_ret, rtol=1e-4, atol=1e-4)
    # Garbage after EOS changes nothing, and both outputs are 0 there.
    pad = mask == 0
    noisy_rewards = np.where(pad, 1e3, rewards).astype(np.float32)
    noisy_values = np.where(pad, -1e3, values).astype(np.float32)
    noisy = ppo_math.gae(noisy_rewards, noisy_values, mask, gamma, lam)
    np.testing.assert_array_equal(noisy[0], advantages)
    np.testing.assert_array_equal(noisy[1], returns)
    assert np.all(np.asarray(advantages)[pad] == 0) and np.all(np.asarray(returns)[pad] == 0)


def test_gae_with_gamma_one_lambda_one_is_reward_to_go_minus_value():
    mask = prefix_mask([4, 2], 4)
    rewards = np.array([[0.0, 0.0, 0.0, 1.0], [0.5, 2.0, 9.0, 9.0]], np.float32)
    values = np.array([[0.1, 0.2, 0.3, 0.4], [1.0, -1.0, 9.0, 9.0]], np.float32)
    advantages, returns = jax.jit(ppo_math.gae)(rewards, values, mask, 1.0, 1.0)
    to_go = np.array([[1.0, 1.0, 1.0, 1.0], [2.5, 2.0, 0.0, 0.0]])
    np.testing.assert_allclose(returns, to_go, rtol=1e-6)
    np.testing.assert_allclose(advantages, (to_go - values) * mask, rtol=1e-6)


# ------------------------------------------------------------------------------------------
# Losses.
# ------------------------------------------------------------------------------------------


def numpy_policy_loss(logprobs, old, advantages, mask, eps):
    ratio = np.exp(np.float64(logprobs) - old)
    unclipped = -advantages * ratio
    clipped = -advantages * np.clip(ratio, 1 - eps, 1 + eps)
    real = mask > 0
    loss = np.maximum(unclipped, clipped)[real].mean()
    fraction = (clipped > unclipped)[real].mean()
    approx_kl = 0.5 * np.square(np.float64(logprobs) - old)[real].mean()
    return loss, fraction, approx_kl, ratio[real].mean()


# Ratios exp(Δ): 1.5 and 0.6 lie outside [0.8, 1.2], 1.1 and 0.9 inside, with both signs of A;
# the last column is padding whose values must not matter.
POLICY_OLD = np.log(np.array([[1.0, 1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0, 1.0]]))
POLICY_NEW = np.log(np.array([[1.5, 0.6, 1.1, 0.9, 50.0], [1.5, 0.6, 1.1, 0.9, 0.01]]))
POLICY_ADV = np.array([[2.0, 2.0, 2.0, -1.0, 5.0], [-3.0, -0.5, -1.0, 0.5, -5.0]])
POLICY_MASK = prefix_mask([4, 4], 5)


def test_policy_loss_matches_numpy_on_ratios_outside_the_clip_range():
    args = [np.asarray(a, np.float32) for a in (POLICY_NEW, POLICY_OLD, POLICY_ADV, POLICY_MASK)]
    loss, stats = jax.jit(ppo_math.policy_loss)(*args, clip_range=0.2)
    ref_loss, ref_fraction, ref_kl, ref_ratio = numpy_policy_loss(*args, eps=0.2)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
    np.testing.assert_allclose(stats["clip_fraction"], ref_fraction, rtol=1e-6)
    np.testing.assert_allclose(stats["approx_kl"], ref_kl, rtol=1e-5)
    np.testing.assert_allclose(stats["ratio_mean"], ref_ratio, rtol=1e-5)
    # By hand, per token max(−Aρ, −A·clip(ρ)):
    # row 0: ρ=1.5,A=2 → max(−3, −2.4) = −2.4 (clipped); ρ=0.6,A=2 → max(−1.2, −1.6) = −1.2;
    #        ρ=1.1,A=2 → −2.2; ρ=0.9,A=−1 → 0.9.
    # row 1: ρ=1.5,A=−3 → max(4.5, 3.6) = 4.5; ρ=0.6,A=−.5 → max(.3, .4) = .4 (clipped);
    #        ρ=1.1,A=−1 → 1.1; ρ=0.9,A=.5 → −.45.
    by_hand = np.array([-2.4, -1.2, -2.2, 0.9, 4.5, 0.4, 1.1, -0.45]).mean()
    np.testing.assert_allclose(loss, by_hand, rtol=1e-5)
    np.testing.assert_allclose(stats["clip_fraction"], 2 / 8)
    assert set(stats) == {"clip_fraction", "approx_kl", "ratio_mean"}


def test_policy_loss_gradient_is_minus_advantage_times_ratio_inside_the_clip_range():
    old = jnp.zeros((1, 3))
    new = jnp.log(jnp.array([[1.05, 1.5, 1.0]]))
    advantages = jnp.array([[1.0, 1.0, -2.0]])
    mask = jnp.ones((1, 3))
    grad = jax.grad(lambda lp: ppo_math.policy_loss(lp, old, advantages, mask)[0])(new)
    # d/dlogp of −Aρ is −Aρ/n; the clipped token (ρ=1.5, A>0) has no gradient.
    np.testing.assert_allclose(grad, [[-1.05 / 3, 0.0, 2.0 / 3]], rtol=1e-5)


def numpy_value_loss(values, old, returns, mask, eps):
    values, old, returns = (np.float64(a) for a in (values, old, returns))
    clipped = np.clip(values, old - eps, old + eps)
    e1, e2 = np.square(values - returns), np.square(clipped - returns)
    real = mask > 0
    return 0.5 * np.maximum(e1, e2)[real].mean(), (e2 > e1)[real].mean()


def test_value_loss_matches_numpy_with_clipping():
    # V_old = 0 in row 0 and 1 in row 1, ε = 0.2; the last column is padding.
    old = np.array([[0.0, 0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0, 1.0]], np.float32)
    values = np.array([[0.5, -0.5, 0.1, 2.0, 3.0], [1.1, 2.0, 0.0, 1.6, -7.0]], np.float32)
    returns = np.array([[3.0, 1.0, 0.3, 1.0, 9.0], [1.0, 1.0, 2.0, 5.0, 9.0]], np.float32)
    mask = prefix_mask([4, 4], 5)
    loss, stats = jax.jit(ppo_math.value_loss)(values, old, returns, mask, 0.2)
    ref_loss, ref_fraction = numpy_value_loss(values, old, returns, mask, 0.2)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
    np.testing.assert_allclose(stats["value_clip_fraction"], ref_fraction, rtol=1e-6)
    # By hand, max((V − R)², (clip(V) − R)²):
    # row 0: V=.5→.2, R=3: max(6.25, 7.84) = 7.84 (clipped larger: V moved past the clip
    #        towards R); V=−.5→−.2, R=1: max(2.25, 1.44) = 2.25; V=.1 inside: .04;
    #        V=2→.2, R=1: max(1, .64) = 1.
    # row 1: V=1.1 inside, R=1: .01; V=2→1.2, R=1: max(1, .04) = 1;
    #        V=0→.8, R=2: max(4, 1.44) = 4; V=1.6→1.2, R=5: max(11.56, 14.44) = 14.44 (clipped).
    by_hand = [7.84, 2.25, 0.04, 1.0, 0.01, 1.0, 4.0, 14.44]
    np.testing.assert_allclose(loss, 0.5 * np.mean(by_hand), rtol=1e-5)
    np.testing.assert_allclose(stats["value_clip_fraction"], 2 / 8, rtol=1e-6)
    assert set(stats) == {"value_clip_fraction"}
    # A wider clip range leaves every token unclipped: plain 0.5·MSE.
    wide, wide_stats = ppo_math.value_loss(values, old, returns, mask, 100.0)
    real = mask > 0
    np.testing.assert_allclose(wide, 0.5 * np.square(values - returns)[real].mean(), rtol=1e-5)
    assert wide_stats["value_clip_fraction"] == 0.0


def test_value_loss_ignores_padding_and_passes_gradient_only_to_values():
    values = jnp.array([[0.3, 99.0]])
    mask = jnp.array([[1.0, 0.0]])
    old, returns = jnp.full((1, 2), 0.2), jnp.ones((1, 2))
    loss, _ = ppo_math.value_loss(values, old, returns, mask)
    # V=.3 inside the clip [0, .4]: 0.5·(0.3−1)² = 0.245
    np.testing.assert_allclose(loss, 0.245, rtol=1e-5)
    grads = jax.grad(lambda v, o, r: ppo_math.value_loss(v, o, r, mask)[0], argnums=(0, 1, 2))(
        values, old, returns)
    np.testing.assert_allclose(grads[0], [[-0.7, 0.0]], rtol=1e-5)
    np.testing.assert_array_equal(grads[1], 0.0)
    np.testing.assert_array_equal(grads[2], 0.0)


# ------------------------------------------------------------------------------------------
# Diagnostics.
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("vocab", [1, 2, 7, 32000])
def test_entropy_of_uniform_logits_is_log_vocab(vocab):
    logits = jnp.full((2, 3, vocab), 4.25, jnp.bfloat16)
    entropy = jax.jit(ppo_math.entropy_from_logits)(logits)
    assert entropy.shape == (2, 3) and entropy.dtype == jnp.float32
    np.testing.assert_allclose(entropy, np.log(vocab), atol=1e-4)


def test_entropy_matches_numpy_and_handles_minus_inf_logits():
    rng = np.random.default_rng(3)
    logits = rng.normal(scale=3.0, size=(2, 4, 9))
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    np.testing.assert_allclose(ppo_math.entropy_from_logits(jnp.asarray(logits, jnp.float32)),
                               -(p * np.log(p)).sum(-1), rtol=1e-4, atol=1e-5)
    masked = jnp.array([[[0.0, 0.0, -jnp.inf, -jnp.inf]]])
    np.testing.assert_allclose(ppo_math.entropy_from_logits(masked), [[np.log(2)]], rtol=1e-6)


def test_explained_variance():
    rng = np.random.default_rng(4)
    returns = rng.normal(size=(3, 5)).astype(np.float32)
    mask = prefix_mask([5, 3, 1], 5)
    garbage_values = np.where(mask > 0, returns, 123.0).astype(np.float32)
    np.testing.assert_allclose(ppo_math.explained_variance(garbage_values, returns, mask), 1.0)
    mean = returns[mask > 0].mean()
    np.testing.assert_allclose(
        ppo_math.explained_variance(np.full_like(returns, mean), returns, mask), 0.0, atol=1e-6)
    values = rng.normal(size=returns.shape).astype(np.float32)
    real = mask > 0
    expected = 1 - np.var(returns[real] - values[real]) / np.var(returns[real])
    np.testing.assert_allclose(jax.jit(ppo_math.explained_variance)(values, returns, mask),
                               expected, rtol=1e-4)
    assert np.isnan(ppo_math.explained_variance(values, np.ones_like(returns), mask))


# ------------------------------------------------------------------------------------------
# KL coefficient control.
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "beta, kl, n_steps, target, horizon, expected",
    [
        (0.1, 6.6, 512, 6.0, 10000, 0.1 * (1 + 0.1 * 512 / 10000)),  # e = +0.1, unclipped
        (0.1, 5.4, 512, 6.0, 10000, 0.1 * (1 - 0.1 * 512 / 10000)),  # e = −0.1, unclipped
        (0.15, 60.0, 64, 6.0, 10000, 0.15 * (1 + 0.2 * 64 / 10000)),  # e = 9 → +0.2
        (0.15, 0.0, 64, 6.0, 10000, 0.15 * (1 - 0.2 * 64 / 10000)),  # e = −1 → −0.2
        (0.2, -3.0, 100, 1.0, 100, 0.2 * (1 - 0.2)),  # negative KL, e = −4 → −0.2
        (0.05, 6.0, 256, 6.0, 10000, 0.05),  # on target
    ],
)
def test_adaptive_kl_update_by_hand(beta, kl, n_steps, target, horizon, expected):
    got = jax.jit(ppo_math.adaptive_kl_update)(beta, kl, n_steps, target, horizon)
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    control = ppo_math.KLControl(init_beta=beta, target=target, horizon=horizon)
    assert control.adaptive
    np.testing.assert_allclose(control.update(beta, kl, n_steps), expected, rtol=1e-6)


def test_fixed_kl_control_leaves_beta_unchanged():
    control = ppo_math.KLControl()
    assert control == ppo_math.KLControl(0.02, None, 10000) and not control.adaptive
    beta = jnp.float32(control.init_beta)
    for kl in (0.0, 100.0, -5.0):
        beta = jax.jit(control.update)(beta, kl, 512)
    assert beta.dtype == jnp.float32
    np.testing.assert_allclose(beta, 0.02)
    with pytest.raises(dataclasses.FrozenInstanceError):
        control.target = 6.0


def test_adaptive_control_inside_a_jitted_loop_converges_towards_target():
    control = ppo_math.KLControl(init_beta=0.1, target=6.0, horizon=1000)

    @jax.jit
    def run(beta):
        # A toy policy whose KL falls as β grows: KL = 1 / β.
        def body(beta, _):
            return control.update(beta, 1.0 / beta, 64), None
        return jax.lax.scan(body, beta, None, length=500)[0]

    beta = run(jnp.float32(0.1))
    np.testing.assert_allclose(1.0 / beta, 6.0, rtol=0.05)


@pytest.mark.parametrize(
    "kwargs",
    [dict(init_beta=-0.1), dict(init_beta=float("nan")), dict(target=0.0), dict(target=-1.0),
     dict(target=float("inf")), dict(horizon=0), dict(horizon=2.5), dict(horizon=True)],
)
def test_kl_control_validates(kwargs):
    with pytest.raises(ValueError):
        ppo_math.KLControl(**kwargs)


def test_everything_jits_and_differentiates():
    rng = np.random.default_rng(5)
    shape = (3, 6)
    mask = jnp.asarray(prefix_mask([6, 3, 1], 6), bool)
    logprobs = jnp.asarray(rng.normal(size=shape) - 2, jnp.float32)
    ref = jnp.asarray(rng.normal(size=shape) - 2, jnp.float32)
    values = jnp.asarray(rng.normal(size=shape), jnp.float32)
    score = jnp.asarray(rng.normal(size=3), jnp.float32)

    @jax.jit
    def step(logprobs, values, beta):
        rewards, kl = ppo_math.token_rewards(score, logprobs, ref, mask, beta)
        advantages, returns = ppo_math.gae(rewards, values, mask, 1.0, 0.95)
        advantages = ppo_math.masked_whiten(advantages, mask)

        def loss_fn(logprobs, values):
            pg, pg_stats = ppo_math.policy_loss(logprobs, logprobs - 0.1, advantages, mask)
            vf, vf_stats = ppo_math.value_loss(values, values + 0.3, returns, mask)
            return pg + 0.1 * vf, (pg_stats, vf_stats)

        grads, stats = jax.grad(loss_fn, argnums=(0, 1), has_aux=True)(logprobs, values)
        ev = ppo_math.explained_variance(values, returns, mask)
        new_beta = ppo_math.adaptive_kl_update(beta, kl.sum(-1).mean(), 3, 6.0, 10000)
        return grads, stats, ev, new_beta

    grads, stats, ev, new_beta = step(logprobs, values, jnp.float32(0.05))
    for leaf in jax.tree.leaves((grads, stats, ev, new_beta)):
        assert np.all(np.isfinite(np.asarray(leaf)))
    # No gradient reaches padding.
    np.testing.assert_array_equal(np.asarray(grads[0])[~np.asarray(mask)], 0.0)
    np.testing.assert_array_equal(np.asarray(grads[1])[~np.asarray(mask)], 0.0)
