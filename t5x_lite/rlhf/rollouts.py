"""PPO rollouts in one jitted function: sample, score, penalise, advantages.

`rollout` runs on the mesh without leaving it: the policy samples a response per prompt at
temperature T (decoding.sample, the same cached sampler `t5x-lite infer` uses), the policy
and the frozen reference read the (prompt, response) rows for their log-probabilities at the
same T (pure sampling at logits / T for both, or the KL estimate is biased), the value model
reads a value per response token, the reward model a score at the EOS. Then, per token,
r_t = −β·KL_t with the score added at the EOS (rlhf/ppo_math.py), GAE and masked advantage
whitening. What comes back is the batch the PPO update trains on, plus the figures logged.

Which networks take part (`Networks`): the policy is a language model, or a `ScalarHead`
with logits when the value is a head on the policy's trunk (Ziegler et al. 2019); otherwise
a separate value model (a `ScalarHead`, InstructGPT's initialised from the reward model).
The reward model may be another architecture or size than the policy; it reads the same
token ids with its own format.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from t5x_lite import decoding
from t5x_lite.models import heads, model_format
from t5x_lite.rlhf import ppo_math, sequences


@dataclasses.dataclass(frozen=True)
class RolloutConfig:
    """How responses are sampled and turned into per-token rewards (defaults: RLHF_NOTES)."""

    max_new_tokens: int = 32
    temperature: float = 1.0  # InstructGPT 1.0; Ziegler et al. and TRL 0.7
    kl_estimator: str = "k1"  # 'k3': (e^l − 1) − l, never negative per token
    missing_eos_penalty: float = 0.0  # subtracted from the score of a response without EOS
    gamma: float = 1.0  # GAE discount (Ziegler et al., TRL)
    lam: float = 0.95  # GAE λ (Ziegler et al., TRL)
    whiten_rewards: bool = False  # Ziegler et al. on, TRL off

    def __post_init__(self):
        if self.temperature <= 0:
            raise ValueError(f"rollouts sample: temperature must be > 0, got {self.temperature}")
        if self.kl_estimator not in ppo_math.KL_ESTIMATORS:
            raise ValueError(f"kl_estimator must be one of {ppo_math.KL_ESTIMATORS}, got "
                             f"{self.kl_estimator!r}")


@dataclasses.dataclass(frozen=True)
class Networks:
    """The modules of a PPO run (static: they key the compiled rollout)."""

    policy: nn.Module  # a language model, or a ScalarHead(lm, with_logits=True)
    reward: heads.ScalarHead
    value: heads.ScalarHead | None = None  # None: the value is the policy's head

    @property
    def value_head_on_policy(self) -> bool:
        return self.value is None

    @property
    def language_model(self) -> nn.Module:
        """The policy's language model (what samples, and what the reference is)."""
        return self.policy.trunk if self.value_head_on_policy else self.policy


def language_model_params(networks: Networks, policy_params):
    return policy_params["trunk"] if networks.value_head_on_policy else policy_params


def policy_outputs(networks: Networks, params, rows: sequences.Rows, **kwargs):
    """(logits, values or None) of the policy at the response's positions ([B, Lr, ...])."""
    out = sequences.response_outputs(networks.policy, params, rows, **kwargs)
    return out if networks.value_head_on_policy else (out, None)


def generate(networks: Networks, policy_params, prompt, prompt_lengths, key,
             config: RolloutConfig):
    """(responses [B, max_new_tokens], lengths [B]) sampled by the policy at T."""
    seeds = jax.random.bits(key, (prompt.shape[0],), jnp.uint32)
    return decoding.sample(networks.language_model,
                           language_model_params(networks, policy_params), prompt,
                           prompt_lengths, seeds,
                           strategy=decoding.Strategy(temperature=config.temperature),
                           max_new_tokens=config.max_new_tokens)


def reward_scores(reward: heads.ScalarHead, reward_params, prompt, prompt_lengths, response,
                  response_lengths) -> jax.Array:
    """[B] reward-model scores of (prompt, response) rows, read at each response's EOS."""
    rows = sequences.build(model_format.of(reward), prompt, prompt_lengths, response,
                           response_lengths)
    return sequences.at_last_token(sequences.apply(reward, reward_params, rows), rows.features)


def rollout(networks: Networks, config: RolloutConfig, params: dict[str, Any], prompt,
            prompt_lengths, key, beta) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
    """One batch of experience. `params` holds 'policy', 'reference', 'reward' and (with a
    separate value model) 'value'. Returns (the update's batch, scalar figures)."""
    eos_id = model_format.of(networks.language_model).eos_id
    response, lengths = generate(networks, params["policy"], prompt, prompt_lengths, key, config)
    fmt = model_format.of(networks.language_model)
    rows = sequences.build(fmt, prompt, prompt_lengths, response, lengths)
    logits, values = policy_outputs(networks, params["policy"], rows)
    logprobs, entropy = sequences.response_logprobs(logits, rows, response, config.temperature)
    reference_logits = sequences.response_outputs(networks.language_model, params["reference"],
                                                  rows)
    reference_logprobs, _ = sequences.response_logprobs(reference_logits, rows, response,
                                                        config.temperature)
    if values is None:
        values = sequences.response_outputs(networks.value, params["value"], rows)
    values = jnp.where(rows.mask, values, 0.0)
    score = reward_scores(networks.reward, params["reward"], prompt, prompt_lengths, response,
                          lengths)
    ended = jnp.take_along_axis(response, jnp.maximum(lengths - 1, 0)[:, None], 1)[:, 0] == eos_id
    penalised = score - jnp.where(ended, 0.0, config.missing_eos_penalty)
    mask = rows.mask.astype(jnp.float32)
    rewards, kl = ppo_math.token_rewards(penalised, logprobs, reference_logprobs, mask, beta,
                                         config.kl_estimator)
    if config.whiten_rewards:
        rewards = ppo_math.masked_whiten(rewards, mask, shift_mean=False)
    advantages, returns = ppo_math.gae(rewards, values, mask, config.gamma, config.lam)
    batch = {"prompt": prompt, "prompt_lengths": prompt_lengths, "response": response,
             "response_lengths": lengths, "old_logprobs": logprobs, "old_values": values,
             "advantages": ppo_math.masked_whiten(advantages, mask), "returns": returns,
             "mask": mask}
    sequence_kl = jnp.sum(kl, axis=-1)
    figures = {
        "score": jnp.mean(score),
        "score_std": jnp.std(score),
        "kl": jnp.mean(sequence_kl),
        "kl_k3": jnp.mean(jnp.sum(ppo_math.kl_penalty(logprobs, reference_logprobs, "k3")
                                  * mask, -1)),
        "non_score_reward": jnp.mean(jnp.sum(rewards * mask, -1) - penalised),
        "entropy": ppo_math.masked_mean(entropy, mask),
        "response_length": jnp.mean(lengths.astype(jnp.float32)),
        "missing_eos": jnp.mean(1.0 - ended.astype(jnp.float32)),
        "value_mean": ppo_math.masked_mean(values, mask),
        "return_mean": ppo_math.masked_mean(returns, mask),
        "generated_tokens": jnp.sum(lengths).astype(jnp.float32),
    }
    return batch, figures
