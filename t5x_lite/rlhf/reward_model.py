"""Step 2 of InstructGPT: a reward model trained on ranked comparisons (`t5x-lite
train_reward`).

The model is a language model's trunk (either architecture, initialised from the SFT run)
with a scalar head read at the response's last real token, its EOS (models/heads.py,
rlhf/sequences.py). A batch element is one prompt with its K ranked responses; the loss is
InstructGPT's (Ouyang et al. 2022, §3.5): −1/C(K,2) · Σ log σ(r_w − r_l) over all pairs of
that prompt's responses, each response read once ("one forward pass per completion", which
they found overfits less than shuffling pairs into separate elements). An optional margin
is subtracted inside the sigmoid (TRL's RewardTrainer).

After training, the head's bias is shifted so that reference responses (the best-ranked
responses of up to `normalization_samples` training comparisons) score mean 0, as InstructGPT
normalises its RM on labeler demonstrations; the shifted bias is in the final checkpoint, so
PPO reads normalised rewards. Evaluation reports pairwise accuracy on held-out comparisons
(prompts never seen in training) and the reward mean / std.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax

from t5x_lite import partitioning, train_loop
from t5x_lite.models import heads, model_format
from t5x_lite.rlhf import jobs, losses, preference_arrays, preferences, sequences
from t5x_lite.trainer import Trainer


def response_rewards(module, params, batch, dropout_rng=None) -> jax.Array:
    """[B, K] rewards: the head at each response's last real token."""
    rows = sequences.build_ranked(model_format.of(module), batch)
    rngs = None if dropout_rng is None else {"dropout": dropout_rng}
    values = sequences.apply(module, params, rows, deterministic=dropout_rng is None,
                             rngs=rngs)
    return sequences.at_last_token(values, rows.features).reshape(
        batch["responses"].shape[:2])


class RankingLoss:
    """InstructGPT's pairwise loss for `Trainer`, averaged over comparisons (batch
    elements with at least two responses; a padding element has none and weighs 0)."""

    denominator = "comparisons"

    def __init__(self, margin: float = 0.0):
        self.margin = margin

    def init_inputs(self, module, batch):
        return jobs.example_features(module)

    def sums(self, module, params, batch, dropout_rng):
        rewards = response_rewards(module, params, batch, dropout_rng)
        count = batch["num_responses"]
        loss, stats = losses.pairwise_ranking_loss(rewards, count, self.margin)
        real = (count >= 2).astype(jnp.float32)
        present = jnp.arange(rewards.shape[1])[None] < count[:, None]
        rewards = jnp.where(present, rewards, 0.0)
        sums = {
            "loss": jnp.sum(loss * real),
            "comparisons": jnp.sum(real),
            "correct_pairs": stats["correct_pairs"],
            "pairs": stats["pairs"],
            "responses": jnp.sum(present).astype(jnp.float32),
            "reward_sum": jnp.sum(rewards),
            "reward_square_sum": jnp.sum(jnp.square(rewards)),
        }
        return sums["loss"], sums

    @staticmethod
    def normalise(sums):
        responses = jnp.maximum(sums["responses"], 1.0)
        mean = sums["reward_sum"] / responses
        variance = jnp.maximum(sums["reward_square_sum"] / responses - jnp.square(mean), 0.0)
        return {
            "loss": sums["loss"] / jnp.maximum(sums["comparisons"], 1.0),
            "pairwise_accuracy": sums["correct_pairs"] / jnp.maximum(sums["pairs"], 1.0),
            "reward_mean": mean,
            "reward_std": jnp.sqrt(variance),
            "comparisons": sums["comparisons"],
        }


PADDING = {"prompt": 0, "prompt_lengths": 0, "responses": 0, "response_lengths": 0,
           "num_responses": 0}


def train_reward(
    *,
    model_dir: str,
    model,
    vocabulary,
    preference_data: preferences.PreferenceData,
    optimizer: Callable[..., optax.GradientTransformation],
    learning_rate: optax.Schedule,
    train_steps: int,
    batch_size: int,
    prompt_length: int,
    response_length: int,
    max_responses: int = 4,
    instruction_prompts: bool = True,
    init_from: str | None = None,
    margin: float = 0.0,
    normalization_samples: int = 256,
    mesh_shape=(-1, 1, 1),
    dcn_mesh_shape=None,
    logical_axis_rules=partitioning.DEFAULT_RULES,
    seed: int = 0,
    log_every: int = 10,
    eval_every: int = 100,
    checkpoint_every: int = 100,
    keep_checkpoints: int = 3,
    progress_bar: bool = True,
) -> dict[str, Any]:
    """Trains a reward model on `model`'s trunk; returns the last logged metrics (the final
    evaluation's pairwise accuracy among them). `instruction_prompts`: prompts end with EOS
    as instruction tuning's inputs do (jobs.prompt_eos)."""
    fmt = model_format.of(model)
    model_format.check_vocabulary(fmt, vocabulary)
    train, held_out = preference_data.train_eval()
    encode = lambda c: preference_arrays.encode(c, vocabulary, prompt_length=prompt_length,
                                          response_length=response_length,
                                          max_responses=max_responses,
                                          prompt_eos=jobs.prompt_eos(model, instruction_prompts))
    train_arrays, counts = encode(train)
    if counts:
        train_loop.say(f"training comparisons: {dict(counts)}")
    eval_arrays = encode(held_out)[0] if held_out else None
    train_loop.say(f"reward model: {len(train_arrays['prompt'])} training comparisons, "
                   f"{0 if eval_arrays is None else len(eval_arrays['prompt'])} held out")

    head = heads.ScalarHead(model)
    mesh = partitioning.make_mesh(mesh_shape, dcn_mesh_shape=dcn_mesh_shape)
    jobs.check_batch(batch_size, mesh, logical_axis_rules)
    trainer = Trainer(head, optimizer(learning_rate=learning_rate), learning_rate, mesh,
                      logical_axis_rules, batch_shapes=jobs.batch_shapes(train_arrays, batch_size),
                      loss=RankingLoss(margin))
    iterator, next_batch = jobs.train_batches(
        train_arrays, mesh, trainer.rules, batch_size=batch_size, seed=seed)
    run = train_loop.Run.open(model_dir, train_loop.Schedule(
        train_steps, log_every, eval_every, checkpoint_every, keep_checkpoints, progress_bar))
    state, start = run.restore_or_init(
        trainer.abstract_state_with_shardings(),
        lambda: jobs.with_initial_trunk(trainer.create_state(seed), init_from, model, mesh,
                                        trainer.rules),
        iterator)

    def evaluate(state):
        return jobs.evaluate(trainer, state.params, eval_arrays, PADDING)

    def normalise(state):
        reference = {k: v[:normalization_samples] for k, v in train_arrays.items()}
        reference = dict(reference, num_responses=np.minimum(reference["num_responses"], 1))
        offset = reference_mean(trainer, state.params, reference)
        params = heads.set_bias(state.params, state.params["head"]["bias"] - offset)
        train_loop.say(f"reward normalised: reference responses scored {offset:+.4f} on "
                       "average before, 0 now")
        return state.replace(params=params), {"reward/normalization_offset": offset}

    return run.loop(state, start, trainer.train_step, next_batch, iterator,
                    evaluate=evaluate if eval_arrays is not None else None,
                    finish=normalise if normalization_samples else None)


def reference_mean(trainer: Trainer, params, reference: Mapping[str, np.ndarray]) -> float:
    """Mean reward of the first response of each row (`num_responses` 1 keeps only it)."""
    metrics = jobs.evaluate(trainer, params, reference, PADDING)
    return float(metrics["reward_mean"])


def check_arguments(*, train_steps, batch_size, prompt_length, response_length,
                    max_responses=4, log_every=10, eval_every=100, checkpoint_every=100):
    """`train_reward`'s plain arguments, checked before gin builds data and models."""
    train_loop._check_positive(train_steps=train_steps, batch_size=batch_size,
                               prompt_length=prompt_length, response_length=response_length,
                               log_every=log_every, eval_every=eval_every,
                               checkpoint_every=checkpoint_every)
    if not isinstance(max_responses, int) or max_responses < 2:
        raise ValueError(f"max_responses must be an integer >= 2, got {max_responses!r}")
