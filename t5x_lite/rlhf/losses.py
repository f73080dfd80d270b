"""Preference losses for reward modelling and direct preference optimisation.

Pure `jax.numpy` functions: no state, no gin, jittable (string options such as `loss_type`
are Python-level and must be static under `jax.jit`). All arithmetic is done in float32.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

DPO_LOSS_TYPES = ("sigmoid", "ipo")


def ranking_pairs(num_responses: int) -> np.ndarray:
    """All C(K, 2) (better, worse) index pairs of K responses ranked best first.

    Row p is (i, j) with i < j, so response i is preferred to response j. Rows are in
    lexicographic order; K < 2 gives an empty [0, 2] array. int32.
    """
    i, j = np.triu_indices(int(num_responses), k=1)
    return np.stack([i, j], axis=-1).astype(np.int32)


def _pair_terms(rewards, num_responses):
    """Over all C(K, 2) pairs: (r_w - r_l [B, P], r_w > r_l [B, P], valid-pair mask [B, P]).

    Padding rewards (index >= num_responses[b]) are replaced by 0 with `where` before any
    arithmetic, so NaN/inf padding reaches neither the values nor the gradients.
    """
    rewards = jnp.asarray(rewards).astype(jnp.float32)
    batch, k = rewards.shape
    num_responses = jnp.broadcast_to(jnp.asarray(num_responses, jnp.int32), (batch,))
    present = jnp.arange(k)[None, :] < num_responses[:, None]
    rewards = jnp.where(present, rewards, 0.0)
    pairs = ranking_pairs(k)
    better, worse = pairs[:, 0], pairs[:, 1]
    # i < j, so the pair is valid exactly when the worse (later) response is present.
    valid = worse[None, :] < num_responses[:, None]
    # Compare the rewards, not their difference, which can underflow (XLA on CPU flushes
    # subnormals to zero, inputs included, so subnormal rewards still compare as 0).
    return rewards[:, better] - rewards[:, worse], rewards[:, better] > rewards[:, worse], valid


def pairwise_ranking_loss(
    rewards: jax.Array,
    num_responses: jax.Array | int,
    margin: jax.Array | float = 0.0,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Reward-model ranking loss over all pairs of each prompt's ranked responses.

    InstructGPT (Ouyang et al. 2022, section 3.5, eq. 1): the C(K, 2) comparisons of one
    prompt form one batch element, with loss -1/C(K, 2) * sum log sigmoid(r_w - r_l).
    `margin` (scalar or [B]) is subtracted inside the sigmoid as TRL's RewardTrainer does:
    -log sigmoid(r_w - r_l - margin).

    Args:
      rewards: [B, K] scalar rewards, responses ranked best first; entries at index
        >= num_responses[b] are padding and are ignored (they may be NaN or inf).
      num_responses: [B] (or scalar) number of real responses k_b per row, 0 <= k_b <= K.
      margin: scalar or [B].

    Returns:
      (loss [B], stats). loss[b] is the mean over row b's C(k_b, 2) pairs (0 when k_b < 2).
      stats: `loss` (the same [B] array), `correct_pairs` (number of valid pairs with
      r_w > r_l, summed over the batch; ties count as wrong) and `pairs` (number of valid
      pairs, summed), so pairwise accuracy is correct_pairs / pairs.
    """
    diff, better, valid = _pair_terms(rewards, num_responses)
    margin = jnp.asarray(margin, jnp.float32)
    if margin.ndim == 1:
        margin = margin[:, None]
    logits = jnp.where(valid, diff - margin, 0.0)
    pair_loss = jnp.where(valid, -jax.nn.log_sigmoid(logits), 0.0)
    count = jnp.sum(valid, axis=-1)
    loss = jnp.sum(pair_loss, axis=-1) / jnp.maximum(count, 1).astype(jnp.float32)
    correct = jnp.logical_and(valid, better)
    stats = {
        "loss": loss,
        "correct_pairs": jnp.sum(correct).astype(jnp.float32),
        "pairs": jnp.sum(count).astype(jnp.float32),
    }
    return loss, stats


def pairwise_accuracy(rewards: jax.Array, num_responses: jax.Array | int) -> jax.Array:
    """Fraction of valid (better, worse) pairs over the batch with r_w > r_l (ties are wrong).

    Same pairs and padding rules as `pairwise_ranking_loss`; 0 when the batch has no pair.
    """
    _, better, valid = _pair_terms(rewards, num_responses)
    correct = jnp.sum(jnp.logical_and(valid, better)).astype(jnp.float32)
    return correct / jnp.maximum(jnp.sum(valid), 1).astype(jnp.float32)


def dpo_loss(
    chosen_logps: jax.Array,
    rejected_logps: jax.Array,
    ref_chosen_logps: jax.Array,
    ref_rejected_logps: jax.Array,
    *,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
    loss_type: str = "sigmoid",
    chosen_lengths: jax.Array | None = None,
    rejected_lengths: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Per-example DPO-family loss from sequence log-probabilities.

    All log-probs are [B], summed over the response tokens (prompt excluded). With
    Delta = (log pi(y_w) - log pi_ref(y_w)) - (log pi(y_l) - log pi_ref(y_l)):

    - "sigmoid": DPO (Rafailov et al. 2023, eq. 7), -log sigmoid(beta * Delta). With label
      smoothing eps this is conservative DPO (cDPO, Mitchell 2023):
      (1 - eps) * -log sigmoid(beta * Delta) + eps * -log sigmoid(-beta * Delta).
    - "ipo": IPO (Azar et al. 2023, eq. 17), (Delta_bar - 1 / (2 beta))^2, where Delta_bar
      divides each side's summed log-ratio by its response length (TRL's length
      normalisation, which TRL reports confirming with the IPO authors). Needs
      `chosen_lengths` and `rejected_lengths` ([B] token counts; clamped to >= 1 as TRL does).
      Label smoothing does not apply to IPO and must be 0.

    Returns:
      (loss [B], metrics). metrics (all [B], gradient-stopped): `chosen_rewards` =
      beta * (log pi - log pi_ref) on the chosen response (DPO's implicit reward, section 5),
      `rejected_rewards`, `reward_margin` = chosen - rejected, and `reward_accuracy` =
      1.0 where chosen_rewards > rejected_rewards else 0.0.
    """
    if loss_type not in DPO_LOSS_TYPES:
        raise ValueError(f"Unknown DPO loss_type {loss_type!r}; expected one of {DPO_LOSS_TYPES}.")
    if loss_type == "ipo":
        if chosen_lengths is None or rejected_lengths is None:
            raise ValueError("loss_type='ipo' needs chosen_lengths and rejected_lengths.")
        if isinstance(label_smoothing, (int, float)) and label_smoothing != 0:
            raise ValueError("label_smoothing applies to loss_type='sigmoid' (cDPO) only, not 'ipo'.")

    def f32(x):
        return jnp.asarray(x).astype(jnp.float32)

    chosen_logratios = f32(chosen_logps) - f32(ref_chosen_logps)
    rejected_logratios = f32(rejected_logps) - f32(ref_rejected_logps)

    if loss_type == "sigmoid":
        logits = beta * (chosen_logratios - rejected_logratios)
        loss = (
            -(1.0 - label_smoothing) * jax.nn.log_sigmoid(logits)
            - label_smoothing * jax.nn.log_sigmoid(-logits)
        )
    else:  # ipo
        chosen_len = jnp.maximum(f32(chosen_lengths), 1.0)
        rejected_len = jnp.maximum(f32(rejected_lengths), 1.0)
        delta_bar = chosen_logratios / chosen_len - rejected_logratios / rejected_len
        loss = jnp.square(delta_bar - 1.0 / (2.0 * beta))

    chosen_rewards = jax.lax.stop_gradient(beta * chosen_logratios)
    rejected_rewards = jax.lax.stop_gradient(beta * rejected_logratios)
    metrics = {
        "chosen_rewards": chosen_rewards,
        "rejected_rewards": rejected_rewards,
        "reward_margin": chosen_rewards - rejected_rewards,
        "reward_accuracy": (chosen_rewards > rejected_rewards).astype(jnp.float32),
    }
    return loss, metrics
