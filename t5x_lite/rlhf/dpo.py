"""Direct preference optimisation (`t5x-lite dpo`): DPO, cDPO and IPO on comparisons.

DPO (Rafailov et al. 2023) trains the policy straight on preference pairs, the reward being
implicit: β·(log π(y) − log π_ref(y)), log-probabilities summed over the response's tokens
(sequences.py reads them exactly as training and scoring do). `label_smoothing` ε gives
cDPO; `loss_type='ipo'` is IPO (Azar et al. 2023) with per-token-averaged log-ratios
(rlhf/losses.py). A K-way ranking contributes all of its C(K,2) pairs.

The reference is the SFT model the policy starts from, never updated. Its log-probs are
computed once over the data before training (`precompute_reference=True`, the default here:
a frozen model gives the same numbers every epoch) or live every step (TRL's default), both
by the same jitted function.
"""
from __future__ import annotations

import functools
import itertools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from t5x_lite import partitioning, train_loop
from t5x_lite.models import model_format
from t5x_lite.rlhf import jobs, losses, preference_arrays, preferences, sequences
from t5x_lite.trainer import Trainer


def pairs_of(comparisons) -> list[preferences.Comparison]:
    """Every (better, worse) pair of each ranking: DPO's loss is over pairs."""
    return [preferences.Comparison(c.prompt, (c.responses[i], c.responses[j]))
            for c in comparisons
            for i, j in itertools.combinations(range(len(c.responses)), 2)]


def sequence_logprobs(module, params, batch, dropout_rng=None) -> jax.Array:
    """[B, K] log-probabilities of each response, summed over its tokens (EOS included)."""
    rows = sequences.build_ranked(model_format.of(module), batch)
    rngs = None if dropout_rng is None else {"dropout": dropout_rng}
    logits = sequences.response_outputs(module, params, rows,
                                        deterministic=dropout_rng is None, rngs=rngs)
    token_logprobs, _ = sequences.response_logprobs(logits, rows,
                                                    batch["responses"].reshape(rows.mask.shape))
    return jnp.sum(token_logprobs, -1).reshape(batch["responses"].shape[:2])


class DPOLoss:
    """DPO / cDPO / IPO for `Trainer`, averaged over pairs (a padding row weighs 0)."""

    denominator = "pairs"

    def __init__(self, beta: float = 0.1, label_smoothing: float = 0.0,
                 loss_type: str = "sigmoid"):
        if loss_type not in losses.DPO_LOSS_TYPES:
            raise ValueError(f"loss_type must be one of {losses.DPO_LOSS_TYPES}, got "
                             f"{loss_type!r}")
        self.beta, self.label_smoothing, self.loss_type = beta, label_smoothing, loss_type

    def init_inputs(self, module, batch):
        return jobs.example_features(module)

    def sums(self, module, params, batch, dropout_rng):
        logps = sequence_logprobs(module, params, batch, dropout_rng)
        ref, lengths = batch["ref_logps"], batch["response_lengths"]
        loss, stats = losses.dpo_loss(
            logps[:, 0], logps[:, 1], ref[:, 0], ref[:, 1], beta=self.beta,
            label_smoothing=self.label_smoothing if self.loss_type == "sigmoid" else 0.0,
            loss_type=self.loss_type, chosen_lengths=lengths[:, 0],
            rejected_lengths=lengths[:, 1])
        real = (batch["num_responses"] >= 2).astype(jnp.float32)
        total = lambda x: jnp.sum(x * real)
        sums = {"loss": total(loss), "pairs": jnp.sum(real),
                "reward_accuracy": total(stats["reward_accuracy"]),
                "reward_margin": total(stats["reward_margin"]),
                "chosen_reward": total(stats["chosen_rewards"]),
                "rejected_reward": total(stats["rejected_rewards"]),
                "chosen_logp": total(jax.lax.stop_gradient(logps[:, 0]))}
        return sums["loss"], sums

    @staticmethod
    def normalise(sums):
        pairs = jnp.maximum(sums["pairs"], 1.0)
        return {k: (v if k == "pairs" else v / pairs) for k, v in sums.items()}


PADDING = {"prompt": 0, "prompt_lengths": 0, "responses": 0, "response_lengths": 0,
           "num_responses": 0, "ref_logps": 0.0}


def reference_logprobs(trainer: Trainer, reference_params, arrays) -> np.ndarray:
    """[N, 2] reference log-probs of every pair in `arrays`, computed once, batch by batch
    (each process computes its rows' and all gather them: every host then holds the whole
    table, as it holds the whole data)."""
    fn = _reference_fn(trainer)
    out = []
    size = trainer.batch_size
    rows = len(arrays["prompt"])
    for start in range(0, rows, size):
        chunk = {k: v[start:start + size] for k, v in arrays.items() if k != "ref_logps"}
        short = size - len(chunk["prompt"])
        chunk = {k: np.concatenate([v, np.repeat(v[-1:], short, 0)]) for k, v in chunk.items()}
        placed = partitioning.put_global(chunk, jax.tree.map(lambda _: trainer.batch_sharding,
                                                             chunk))
        out.append(np.asarray(jax.device_get(fn(reference_params, placed)))[:size - short])
    return np.concatenate(out).astype(np.float32)


@functools.lru_cache(maxsize=4)
def _reference_fn(trainer: Trainer, out_sharding=None) -> Callable:
    """Jitted reference log-probs of a batch: replicated (to collect them on the host) or,
    computed live, laid out as the batch they join. One per trainer, so the train and eval
    tables share one compiled program."""
    return jobs.jit_on_mesh(
        lambda params, batch: sequence_logprobs(trainer.module, params, batch),
        trainer.mesh, trainer.rules,
        out_shardings=out_sharding or partitioning.replicated(trainer.mesh))


def train_dpo(
    *,
    model_dir: str,
    model,
    vocabulary,
    preference_data: preferences.PreferenceData,
    init_from: str,
    optimizer: Callable[..., optax.GradientTransformation],
    learning_rate: optax.Schedule,
    train_steps: int,
    batch_size: int,
    prompt_length: int,
    response_length: int,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
    loss_type: str = "sigmoid",
    precompute_reference: bool = True,
    instruction_prompts: bool = True,
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
    """Fine-tunes the SFT model at `init_from` (also the frozen reference) with DPO.
    `instruction_prompts`: prompts end with EOS as instruction tuning's inputs do."""
    model_format.check_vocabulary(model_format.of(model), vocabulary)
    train, held_out = preference_data.train_eval()
    encode = lambda c: preference_arrays.encode(
        pairs_of(c), vocabulary, prompt_length=prompt_length, response_length=response_length,
        max_responses=2, prompt_eos=jobs.prompt_eos(model, instruction_prompts))[0]
    train_arrays = encode(train)
    eval_arrays = encode(held_out) if held_out else None
    train_loop.say(f"DPO: {len(train_arrays['prompt'])} training pairs, "
                   f"{0 if eval_arrays is None else len(eval_arrays['prompt'])} held out")

    mesh = partitioning.make_mesh(mesh_shape, dcn_mesh_shape=dcn_mesh_shape)
    jobs.check_batch(batch_size, mesh, logical_axis_rules)
    reference = jobs.language_model_params(init_from, model, mesh, logical_axis_rules)
    shapes = jobs.batch_shapes(train_arrays, batch_size)
    shapes["ref_logps"] = ((batch_size, 2), np.float32)
    trainer = Trainer(model, optimizer(learning_rate=learning_rate), learning_rate, mesh,
                      logical_axis_rules, batch_shapes=shapes,
                      loss=DPOLoss(beta, label_smoothing, loss_type))
    if precompute_reference:
        train_arrays["ref_logps"] = reference_logprobs(trainer, reference, train_arrays)
    if eval_arrays is not None:
        eval_arrays["ref_logps"] = reference_logprobs(trainer, reference, eval_arrays)
    iterator, next_batch = jobs.train_batches(
        train_arrays, mesh, trainer.rules, batch_size=batch_size, seed=seed)
    live_reference = (None if precompute_reference
                      else _reference_fn(trainer, trainer.batch_sharding))

    def step(state, batch):
        if live_reference is not None:
            batch = dict(batch, ref_logps=live_reference(reference, batch))
        return trainer.train_step(state, batch)

    run = train_loop.Run.open(model_dir, train_loop.Schedule(
        train_steps, log_every, eval_every, checkpoint_every, keep_checkpoints, progress_bar))

    def init():
        return trainer.create_state(seed).replace(params=jax.tree.map(jnp.copy, reference))

    state, start = run.restore_or_init(trainer.abstract_state_with_shardings(), init, iterator)

    def evaluate(state):
        return jobs.evaluate(trainer, state.params, eval_arrays, PADDING)

    return run.loop(state, start, step, next_batch, iterator,
                    evaluate=evaluate if eval_arrays is not None else None)
