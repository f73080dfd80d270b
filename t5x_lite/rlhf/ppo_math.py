"""The arithmetic of PPO for language models, as pure, jittable jnp functions.

Semantics follow Ziegler et al. 2019 ("Fine-Tuning Language Models from Human Preferences",
`lm-human-preferences`), Ouyang et al. 2022 (InstructGPT, section 3.5) and TRL's PPO trainer.
Every per-token array is [batch, length]; `mask` (float or bool, same shape) is 1 on real
response tokens, up to and including EOS, and 0 after. Statistics are float32. Nothing here
raises on data (only on static arguments), so every function can be traced by `jax.jit`.
"""
from __future__ import annotations

import dataclasses
import math
import numbers

import jax
import jax.numpy as jnp

KL_ESTIMATORS = ("k1", "k3")


def _f32(x) -> jax.Array:
    return jnp.asarray(x).astype(jnp.float32)


def _safe_div(num: jax.Array, den: jax.Array) -> jax.Array:
    """num / den, and 0 where den is 0 (a fully masked row or batch has mean 0, not NaN)."""
    return jnp.where(den > 0, num / jnp.where(den > 0, den, 1.0), 0.0)


# --------------------------------------------------------------------------------------------
# Masked statistics (TRL `core.masked_mean`, `masked_var`, `masked_whiten`).
# --------------------------------------------------------------------------------------------


def masked_mean(x: jax.Array, mask: jax.Array, axis=None) -> jax.Array:
    """Σ x·mask / Σ mask over `axis` (all entries when None); 0 where the mask is empty.

    TRL `masked_mean`; TRL divides by zero on an empty mask, here the result is 0.
    """
    x, mask = _f32(x), _f32(mask)
    return _safe_div(jnp.sum(x * mask, axis=axis), jnp.sum(mask, axis=axis))


def masked_var(x: jax.Array, mask: jax.Array, unbiased: bool = True) -> jax.Array:
    """Variance of the real entries of `x` (all axes), with Bessel's n/(n-1) when `unbiased`.

    TRL `masked_var`. TRL raises when n is 0 or 1; here n-1 is floored at 1, which changes
    nothing (one real entry has variance 0 either way) and keeps the function traceable.
    """
    x, mask = _f32(x), _f32(mask)
    mean = masked_mean(x, mask)
    var = masked_mean(jnp.square(x - mean), mask)
    if unbiased:
        n = jnp.sum(mask)
        var = var * n / jnp.maximum(n - 1.0, 1.0)
    return var


def masked_whiten(x: jax.Array, mask: jax.Array, shift_mean: bool = True) -> jax.Array:
    """(x − mean)·rsqrt(var + 1e-8) with the masked mean and unbiased variance of the batch.

    TRL `masked_whiten` (Ziegler et al. whiten rewards, TRL and both papers whiten advantages).
    With `shift_mean=False` the mean is added back (only the scale changes). Entries where
    `mask` is 0 are set to 0, as TRL's trainer does right after whitening
    (`masked_fill(..., padding_mask, 0)`), so padding never carries a value.
    """
    x, mask = _f32(x), _f32(mask)
    mean, var = masked_mean(x, mask), masked_var(x, mask, unbiased=True)
    whitened = (x - mean) * jax.lax.rsqrt(var + 1e-8)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask


# --------------------------------------------------------------------------------------------
# KL penalty and per-token rewards (Ziegler et al. 2019 section 2.2; InstructGPT eq. 2).
# --------------------------------------------------------------------------------------------


def kl_penalty(logprobs: jax.Array, ref_logprobs: jax.Array, estimator: str = "k1") -> jax.Array:
    """Per-token estimate of KL(π ‖ π_ref) at the sampled token.

    k1 = log π − log π_ref (Ziegler et al.; TRL `kl_penalty="kl"`): unbiased, can be negative.
    k3 = (e^l − 1) − l with l = log π_ref − log π (Schulman, "Approximating KL divergence",
    2020; TRL's k3): unbiased, never negative, ≈ k1²/2 for small differences.
    """
    logprobs, ref_logprobs = _f32(logprobs), _f32(ref_logprobs)
    if estimator == "k1":
        return logprobs - ref_logprobs
    if estimator == "k3":
        log_ratio = ref_logprobs - logprobs
        # expm1 keeps (e^l − 1) − l accurate (and ≥ 0) for small l.
        return jnp.maximum(jnp.expm1(log_ratio) - log_ratio, 0.0)
    raise ValueError(f"unknown KL estimator {estimator!r}; expected one of {KL_ESTIMATORS}")


def last_token_index(mask: jax.Array) -> jax.Array:
    """Index of the last real (EOS) token of each row, mask.sum(-1) − 1; −1 for an empty row."""
    return jnp.sum(_f32(mask), axis=-1).astype(jnp.int32) - 1


def token_rewards(
    score: jax.Array,
    logprobs: jax.Array,
    ref_logprobs: jax.Array,
    mask: jax.Array,
    beta,
    estimator: str = "k1",
) -> tuple[jax.Array, jax.Array]:
    """(rewards, kl), both [B, L]: r_t = −β·KL_t on real tokens plus the score [B] at EOS.

    Ziegler et al. 2019 section 2.2 / InstructGPT eq. 2: R(x, y) = r(x, y) − β log(π/π_ref),
    the KL spread per token and the reward-model score on the last real token (EOS, as in
    "The N implementation details of RLHF with PPO"; TRL `compute_rewards`). `kl` is the
    per-token estimate, zeroed after EOS, so `kl.sum(-1)` is each sequence's KL. A row with
    no real token gets no reward at all.
    """
    mask = _f32(mask)
    kl = kl_penalty(logprobs, ref_logprobs, estimator) * mask
    rewards = -_f32(beta) * kl
    length = mask.shape[-1]
    eos = last_token_index(mask)
    at_eos = jax.nn.one_hot(eos, length, dtype=jnp.float32) * (eos >= 0)[:, None]
    rewards = rewards + _f32(score)[:, None] * at_eos
    return rewards, kl


# --------------------------------------------------------------------------------------------
# Generalised advantage estimation (Schulman et al. 2016, eq. 16; TRL `compute_advantages`).
# --------------------------------------------------------------------------------------------


def gae(
    rewards: jax.Array, values: jax.Array, mask: jax.Array, gamma, lam
) -> tuple[jax.Array, jax.Array]:
    """(advantages, returns), both [B, L] and 0 where mask is 0.

    δ_t = r_t + γ V_{t+1} − V_t and A_t = δ_t + γλ A_{t+1} (Schulman et al. 2016, "High-
    Dimensional Continuous Control Using GAE", eq. 16), with V and A beyond a row's last real
    token taken as 0 (the episode ends at EOS); returns = A + V, the value targets (TRL,
    Ziegler et al. `train_policy.py`). One reverse `jax.lax.scan` over time.
    """
    rewards, values, mask = _f32(rewards), _f32(values), _f32(mask)
    gamma, lam = _f32(gamma), _f32(lam)
    rewards, values = rewards * mask, values * mask
    zeros = jnp.zeros_like(values[:, :1])
    next_values = jnp.concatenate([values[:, 1:], zeros], axis=1)  # already 0 after EOS

    def step(next_advantage, inputs):
        r, v, v_next, m = inputs
        delta = r + gamma * v_next - v
        advantage = (delta + gamma * lam * next_advantage) * m
        return advantage, advantage

    time_major = (rewards.T, values.T, next_values.T, mask.T)
    _, advantages = jax.lax.scan(step, jnp.zeros_like(values[:, 0]), time_major, reverse=True)
    advantages = advantages.T
    returns = (advantages + values) * mask
    return advantages, returns


# --------------------------------------------------------------------------------------------
# Losses (Schulman et al. 2017, PPO eq. 7; TRL `loss`; InstructGPT section 3.5).
# --------------------------------------------------------------------------------------------


def policy_loss(
    logprobs: jax.Array,
    old_logprobs: jax.Array,
    advantages: jax.Array,
    mask: jax.Array,
    clip_range=0.2,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Clipped surrogate: masked mean of max(−A·ρ, −A·clip(ρ, 1−ε, 1+ε)), ρ = π/π_old.

    Schulman et al. 2017 eq. 7 as a loss to minimise; per-token, averaged over all real tokens
    of the batch (TRL `loss`). Gradients flow only through `logprobs`. Stats as TRL logs them:
    `clip_fraction` (share of tokens where the clipped term is the larger), `approx_kl`
    (0.5·mean((log π − log π_old)²)) and `ratio_mean`.
    """
    logprobs = _f32(logprobs)
    old_logprobs = jax.lax.stop_gradient(_f32(old_logprobs))
    advantages = jax.lax.stop_gradient(_f32(advantages))
    log_ratio = logprobs - old_logprobs
    ratio = jnp.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * jnp.clip(ratio, 1.0 - clip_range, 1.0 + clip_range)
    loss = masked_mean(jnp.maximum(unclipped, clipped), mask)
    stats = {
        "clip_fraction": masked_mean((clipped > unclipped).astype(jnp.float32), mask),
        "approx_kl": 0.5 * masked_mean(jnp.square(log_ratio), mask),
        "ratio_mean": masked_mean(ratio, mask),
    }
    return loss, jax.tree.map(jax.lax.stop_gradient, stats)


def value_loss(
    values: jax.Array,
    old_values: jax.Array,
    returns: jax.Array,
    mask: jax.Array,
    clip_range_value=0.2,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """0.5 · masked mean of max((V − R)², (clip(V, V_old − ε, V_old + ε) − R)²).

    The clipped value loss of OpenAI baselines' PPO2, used by Ziegler et al. and TRL (`loss`,
    `cliprange_value` 0.2). Gradients flow only through `values`. Stats: `value_clip_fraction`
    (share of tokens where the clipped error is the larger).
    """
    values = _f32(values)
    old_values = jax.lax.stop_gradient(_f32(old_values))
    returns = jax.lax.stop_gradient(_f32(returns))
    clipped_values = jnp.clip(values, old_values - clip_range_value, old_values + clip_range_value)
    unclipped_error = jnp.square(values - returns)
    clipped_error = jnp.square(clipped_values - returns)
    loss = 0.5 * masked_mean(jnp.maximum(unclipped_error, clipped_error), mask)
    fraction = masked_mean((clipped_error > unclipped_error).astype(jnp.float32), mask)
    return loss, {"value_clip_fraction": jax.lax.stop_gradient(fraction)}


# --------------------------------------------------------------------------------------------
# Diagnostics.
# --------------------------------------------------------------------------------------------


def entropy_from_logits(logits: jax.Array) -> jax.Array:
    """Entropy of softmax(logits) over the last axis, [B, L, V] → [B, L], float32.

    H = logsumexp(z) − Σ softmax(z)·z (TRL `entropy_from_logits`). Tokens with −inf logits
    (masked out of the vocabulary) contribute 0 rather than NaN.
    """
    logits = _f32(logits)
    probs = jax.nn.softmax(logits, axis=-1)
    weighted = jnp.where(probs > 0, probs * logits, 0.0)
    return jax.nn.logsumexp(logits, axis=-1) - jnp.sum(weighted, axis=-1)


def explained_variance(values: jax.Array, returns: jax.Array, mask: jax.Array) -> jax.Array:
    """1 − Var(R − V) / Var(R) over the real tokens: 1 for perfect values, ≤ 0 for useless ones.

    OpenAI baselines `explained_variance` (logged by TRL and cleanrl). NaN when the returns
    have zero variance, as there.
    """
    values, returns = _f32(values), _f32(returns)
    var_returns = masked_var(returns, mask)
    var_error = masked_var(returns - values, mask)
    ratio = var_error / jnp.where(var_returns > 0, var_returns, 1.0)
    return jnp.where(var_returns > 0, 1.0 - ratio, jnp.nan)


# --------------------------------------------------------------------------------------------
# KL coefficient control (Ziegler et al. 2019 section 2.2; TRL AdaptiveKLController).
# --------------------------------------------------------------------------------------------


def adaptive_kl_update(beta, current_kl, n_steps, target, horizon) -> jax.Array:
    """β · (1 + e · n_steps / horizon), e = clip(KL / KL_target − 1, −0.2, 0.2).

    The proportional controller of Ziegler et al. 2019 (section 2.2, `train_policy.py`
    AdaptiveKLController) and TRL `AdaptiveKLController.update`; `n_steps` is the number of
    episodes (batch size) since the last update, `current_kl` the mean per-sequence KL.
    """
    error = jnp.clip(_f32(current_kl) / _f32(target) - 1.0, -0.2, 0.2)
    return _f32(beta) * (1.0 + error * _f32(n_steps) / _f32(horizon))


@dataclasses.dataclass(frozen=True)
class KLControl:
    """The KL coefficient schedule: fixed β when `target` is None (InstructGPT: 0.02), else
    adaptive towards `target` nats per sequence over `horizon` episodes (Ziegler et al.).

    β itself is not stored here: it is a float scalar in the (jitted, checkpointed) training
    state, started at `init_beta` and advanced with `update`.
    """

    init_beta: float = 0.02
    target: float | None = None
    horizon: int = 10000

    def __post_init__(self):
        if not (math.isfinite(self.init_beta) and self.init_beta >= 0):
            raise ValueError(f"init_beta must be a finite number >= 0, got {self.init_beta!r}")
        if self.target is not None and not (math.isfinite(self.target) and self.target > 0):
            raise ValueError(f"target must be None or a finite number > 0, got {self.target!r}")
        integral = isinstance(self.horizon, numbers.Integral) and not isinstance(self.horizon, bool)
        if not (integral and self.horizon > 0):
            raise ValueError(f"horizon must be an integer > 0, got {self.horizon!r}")

    @property
    def adaptive(self) -> bool:
        return self.target is not None

    def update(self, beta, current_kl, n_steps) -> jax.Array:
        """The next β: unchanged when fixed, `adaptive_kl_update` otherwise."""
        if self.target is None:
            return _f32(beta)
        return adaptive_kl_update(beta, current_kl, n_steps, self.target, self.horizon)
