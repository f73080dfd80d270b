"""Step 3 of InstructGPT: PPO against a reward model with a KL penalty to the SFT policy
(`t5x-lite ppo`), optionally PPO-ptx.

One iteration of the loop is: a batch of rollouts (rlhf/rollouts.py, one jit on the mesh),
then `ppo_epochs` passes over it in `num_minibatches` shuffled minibatches, each one clipped
policy update (+ clipped value update), then the KL coefficient's update (fixed β, or Ziegler
et al.'s adaptive controller). The policy and value steps are `Trainer` steps with PPO's
losses, so sharding, optimizers and their states are training's own.

* Policy: from the SFT run (`init_from`). Reference: the same SFT weights, held outside the
  trained state and never updated.
* Value: `value_model='reward_model'` is a separate ScalarHead initialised from the reward
  model (InstructGPT); `'policy_head'` a head on the policy's trunk (Ziegler et al.), trained
  with the policy's loss + value_coef · value loss.
* PPO-ptx (InstructGPT eq. 2): with `ptx_coef` γ > 0, every policy minibatch also carries a
  pretraining batch and the loss adds γ · its mean token NLL.

The whole state (policy and value TrainStates with their optimizers, β, the RNG) and both
data iterators (prompts, pretraining batches) are checkpointed together, so a run resumes
exactly where it stopped; a NaN stops it with the last good checkpoint, as in `train`.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from t5x_lite import checkpoints, losses as token_losses, metrics as metrics_lib
from t5x_lite import partitioning, train_loop
from t5x_lite import trainer as trainer_lib
from t5x_lite.data import feature_converters as converters
from t5x_lite.data import objectives, pipeline
from t5x_lite.models import heads, model_format
from t5x_lite.rlhf import jobs, ppo_math, preference_arrays, preferences, rollouts, sequences
from t5x_lite.trainer import Trainer, TrainState

PTX_PREFIX = "ptx/"


@flax.struct.dataclass
class PPOState:
    policy: TrainState
    value: TrainState | None
    beta: jax.Array
    rng: jax.Array  # raw key data


@dataclasses.dataclass(frozen=True)
class LossSettings:
    """PPO's loss settings; defaults from Ziegler et al. / TRL (RLHF_NOTES.md). `temperature`
    is the rollouts' (the job sets it): log-probs are re-read at the sampling temperature."""

    clip_range: float = 0.2
    clip_range_value: float = 0.2
    value_coef: float = 0.1
    ptx_coef: float = 0.0  # PPO-ptx's γ (InstructGPT: 27.8 with their loss scale)
    temperature: float = 1.0


def _rows(fmt, batch) -> sequences.Rows:
    return sequences.build(fmt, batch["prompt"], batch["prompt_lengths"], batch["response"],
                           batch["response_lengths"])


class PolicyLoss:
    """Clipped surrogate (+ value loss when the value is a head on the policy, + γ·NLL of a
    pretraining batch for PPO-ptx): a mean over the minibatch's response tokens."""

    denominator = None

    def __init__(self, networks: rollouts.Networks, settings: LossSettings):
        self.networks, self.settings = networks, settings

    def init_inputs(self, module, batch):
        return jobs.example_features(module)

    def sums(self, module, params, batch, dropout_rng):
        s = self.settings
        rows = _rows(model_format.of(module), batch)
        logits, values = rollouts.policy_outputs(self.networks, params, rows)
        logprobs, entropy = sequences.response_logprobs(logits, rows, batch["response"],
                                                        s.temperature)
        mask = batch["mask"]
        loss, stats = ppo_math.policy_loss(logprobs, batch["old_logprobs"],
                                           batch["advantages"], mask, s.clip_range)
        metrics = {"policy_loss": loss, "entropy": ppo_math.masked_mean(entropy, mask), **stats}
        if values is not None:
            value_loss, value_stats = _value_loss(values, batch, s)
            loss = loss + s.value_coef * value_loss
            metrics.update(value_loss=value_loss, **value_stats)
        if s.ptx_coef:
            ptx_loss = _pretraining_nll(self.networks.language_model,
                                        rollouts.language_model_params(self.networks, params),
                                        batch)
            loss = loss + s.ptx_coef * ptx_loss
            metrics["ptx_loss"] = ptx_loss
        metrics["loss"] = loss
        return loss, metrics

    @staticmethod
    def normalise(sums):
        return dict(sums)


class ValueLoss:
    """A separate value model's clipped value loss (InstructGPT's value function)."""

    denominator = None

    def __init__(self, settings: LossSettings):
        self.settings = settings

    def init_inputs(self, module, batch):
        return jobs.example_features(module)

    def sums(self, module, params, batch, dropout_rng):
        rows = _rows(model_format.of(module), batch)
        loss, stats = _value_loss(sequences.response_outputs(module, params, rows), batch,
                                  self.settings)
        return loss, {"loss": loss, "value_loss": loss, **stats}

    @staticmethod
    def normalise(sums):
        return dict(sums)


def _value_loss(values, batch, settings: LossSettings):
    """Clipped value loss of the values at the response's positions ([B, Lr])."""
    loss, stats = ppo_math.value_loss(values, batch["old_values"], batch["returns"],
                                      batch["mask"], settings.clip_range_value)
    stats["explained_variance"] = ppo_math.explained_variance(values, batch["returns"],
                                                              batch["mask"])
    return loss, stats


def _pretraining_nll(language_model, params, batch) -> jax.Array:
    """Mean token NLL of the minibatch's pretraining rows (the PPO-ptx term)."""
    ptx = {k[len(PTX_PREFIX):]: v for k, v in batch.items() if k.startswith(PTX_PREFIX)}
    logits = language_model.apply({"params": params}, **trainer_lib.model_inputs(ptx))
    token_loss, _ = token_losses.cross_entropy_with_logits(logits, ptx["decoder_target_tokens"])
    weights = ptx["decoder_loss_weights"]
    return jnp.sum(token_loss * weights) / jnp.maximum(jnp.sum(weights), 1.0)


# ----------------------------------------------------------------------------- iteration
class Iteration:
    """The jitted pieces of one PPO iteration and the Python loop over its minibatches."""

    def __init__(self, networks, config: rollouts.RolloutConfig, kl_control: ppo_math.KLControl,
                 policy_trainer, value_trainer, frozen: dict[str, Any], *, batch_size: int,
                 num_minibatches: int, ppo_epochs: int, next_ptx=None):
        self.networks, self.config, self.kl_control = networks, config, kl_control
        self.policy_trainer, self.value_trainer = policy_trainer, value_trainer
        self.frozen, self.batch_size = frozen, batch_size
        self.num_minibatches, self.ppo_epochs, self.next_ptx = num_minibatches, ppo_epochs, next_ptx
        mesh, rules = policy_trainer.mesh, policy_trainer.rules
        self.minibatch_size = batch_size // num_minibatches
        self._rollout = jobs.jit_on_mesh(
            lambda params, prompt, lengths, key, beta: rollouts.rollout(
                networks, config, params, prompt, lengths, key, beta),
            mesh, rules, out_shardings=(policy_trainer.batch_sharding,
                                        partitioning.replicated(mesh)))
        self._minibatch = jax.jit(self._take, static_argnums=3,
                                  out_shardings=policy_trainer.batch_sharding)

    @staticmethod
    def _take(experience, order, start, size):
        rows = jax.lax.dynamic_slice_in_dim(order, start, size)
        return jax.tree.map(lambda x: jnp.take(x, rows, axis=0), experience)

    def params(self, state: PPOState) -> dict[str, Any]:
        params = dict(self.frozen, policy=state.policy.params)
        if state.value is not None:
            params["value"] = state.value.params
        return params

    def rollout(self, state: PPOState, prompts, key):
        return self._rollout(self.params(state), prompts["prompt"], prompts["prompt_lengths"],
                             key, state.beta)

    def __call__(self, state: PPOState, prompts) -> tuple[PPOState, dict[str, jax.Array]]:
        key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.policy.step)
        rollout_key, shuffle_key = jax.random.split(key)
        started = time.perf_counter()
        experience, figures = self.rollout(state, prompts, rollout_key)
        jax.block_until_ready(experience)
        rollout_time, started = time.perf_counter() - started, time.perf_counter()
        policy, value, update = self.update(state.policy, state.value, experience, shuffle_key)
        jax.block_until_ready(update)
        update_time = time.perf_counter() - started
        beta = self.kl_control.update(state.beta, figures["kl"], self.batch_size)
        row_tokens = experience["prompt"].shape[1] + experience["response"].shape[1] + 1
        metrics = {**update, **{f"rollout/{k}": v for k, v in figures.items()},
                   "beta": state.beta,
                   "perf/rollout_tokens_per_second": figures["generated_tokens"] / rollout_time,
                   "perf/update_tokens_per_second":
                       self.ppo_epochs * self.batch_size * row_tokens / update_time,
                   "perf/rollout_seconds": rollout_time, "perf/update_seconds": update_time}
        return state.replace(policy=policy, value=value, beta=beta), metrics

    def update(self, policy: TrainState, value: TrainState | None, experience, key):
        """`ppo_epochs` shuffled passes over the experience in minibatches, each a policy
        step (with a pretraining batch for PPO-ptx) and a value step; returns the new states
        and the updates' mean metrics."""
        updates = []
        for epoch in range(self.ppo_epochs):
            order = jax.random.permutation(jax.random.fold_in(key, epoch), self.batch_size)
            for index in range(self.num_minibatches):
                minibatch = self._minibatch(experience, order, index * self.minibatch_size,
                                            self.minibatch_size)
                if self.next_ptx is not None:
                    minibatch.update({PTX_PREFIX + k: v for k, v in self.next_ptx().items()})
                policy, metrics = self.policy_trainer.train_step(policy, minibatch)
                metrics = dict(metrics)
                if value is not None:
                    value, value_metrics = self.value_trainer.train_step(value, minibatch)
                    for name, figure in value_metrics.items():
                        if name in ("grad_norm", "param_norm", "learning_rate"):
                            metrics[f"value_{name}"] = figure  # the value model's own
                        elif name != "loss":
                            metrics[name] = figure
                updates.append(metrics)
        return policy, value, jax.tree.map(lambda *xs: jnp.mean(jnp.stack(xs)), *updates)

    def evaluate(self, state: PPOState, prompts, seed: int) -> dict[str, float]:
        """Score, KL and length on held-out prompts, sampled as in training with a fixed key."""
        _, figures = self.rollout(state, prompts, jax.random.key(seed))
        return {k: float(v) for k, v in jax.device_get(figures).items()
                if k in ("score", "kl", "kl_k3", "entropy", "response_length", "missing_eos")}


# ----------------------------------------------------------------------------- the job
VALUE_MODELS = ("reward_model", "policy_head")
PLOTTED = ("train/rollout/score", "eval/score", "train/rollout/kl", "train/beta",
           "train/entropy", "train/clip_fraction", "train/approx_kl", "train/value_loss",
           "train/explained_variance", "train/rollout/response_length",
           "train/perf/rollout_tokens_per_second", "train/ptx_loss")


def train_ppo(
    *,
    model_dir: str,
    model,
    vocabulary,
    prompt_data: preferences.PromptData,
    init_from: str,
    reward_model_dir: str,
    reward_model=None,
    value_model: str = "reward_model",
    optimizer,
    learning_rate,
    value_learning_rate=None,
    train_steps: int,
    batch_size: int,
    num_minibatches: int = 1,
    ppo_epochs: int = 4,
    prompt_length: int,
    instruction_prompts: bool = True,
    rollout: rollouts.RolloutConfig = rollouts.RolloutConfig(),
    kl_control: ppo_math.KLControl = ppo_math.KLControl(),
    losses: LossSettings = LossSettings(),
    ptx_data: pipeline.DatasetConfig | None = None,
    ptx_batch_size: int | None = None,
    ptx_feature_lengths=None,
    ptx_objective=objectives.CausalLM(),
    mesh_shape=(-1, 1, 1),
    dcn_mesh_shape=None,
    logical_axis_rules=partitioning.DEFAULT_RULES,
    seed: int = 0,
    log_every: int = 1,
    eval_every: int = 10,
    checkpoint_every: int = 10,
    keep_checkpoints: int = 3,
    progress_bar: bool = True,
) -> dict[str, Any]:
    """PPO (or PPO-ptx when `losses.ptx_coef` > 0) from the SFT run `init_from` against the
    reward model trained in `reward_model_dir` (whose trunk is `reward_model`, by default the
    policy's architecture). `train_steps` counts iterations of `batch_size` rollouts;
    `instruction_prompts`: prompts end with EOS as instruction tuning's inputs do."""
    if value_model not in VALUE_MODELS:
        raise ValueError(f"value_model must be one of {VALUE_MODELS}, got {value_model!r}")
    if batch_size % num_minibatches:
        raise ValueError(f"batch_size={batch_size} is not a multiple of "
                         f"num_minibatches={num_minibatches}")
    fmt = model_format.of(model)
    model_format.check_vocabulary(fmt, vocabulary)
    losses = dataclasses.replace(losses, temperature=rollout.temperature)
    train_prompts, eval_prompts = prompt_data.train_eval()
    encode = lambda p: preference_arrays.encode_prompts(
        p, vocabulary, prompt_length=prompt_length,
        prompt_eos=jobs.prompt_eos(model, instruction_prompts))
    train_arrays = encode(train_prompts)
    mesh = partitioning.make_mesh(mesh_shape, dcn_mesh_shape=dcn_mesh_shape)
    rules = tuple(tuple(r) for r in logical_axis_rules)
    minibatch = batch_size // num_minibatches
    jobs.check_batch(minibatch, mesh, rules)

    reward = heads.ScalarHead(reward_model or model)
    separate_value = value_model == "reward_model"
    networks = rollouts.Networks(
        policy=model if separate_value else heads.ScalarHead(model, with_logits=True),
        reward=reward, value=reward if separate_value else None)
    experience_shapes = _experience_shapes(minibatch, prompt_length, rollout.max_new_tokens)
    policy_shapes = dict(experience_shapes)
    next_ptx, ptx_iterator = None, None
    if losses.ptx_coef:
        ptx_iterator, next_ptx, ptx_shapes = _ptx_batches(
            ptx_data, vocabulary, fmt, ptx_batch_size or minibatch, ptx_feature_lengths,
            ptx_objective, mesh, rules, seed)
        policy_shapes.update({PTX_PREFIX + k: v for k, v in ptx_shapes.items()})
    policy_trainer = Trainer(networks.policy, optimizer(learning_rate=learning_rate),
                             learning_rate, mesh, rules, batch_shapes=policy_shapes,
                             loss=PolicyLoss(networks, losses))
    value_trainer = None
    if separate_value:
        value_rate = value_learning_rate or learning_rate
        value_trainer = Trainer(reward, optimizer(learning_rate=value_rate), value_rate, mesh,
                                rules, batch_shapes=experience_shapes, loss=ValueLoss(losses))
    reference = jobs.language_model_params(init_from, networks.language_model, mesh, rules)
    reward_params = jobs.head_params(reward_model_dir, reward, mesh, rules)
    frozen = {"reference": reference, "reward": reward_params}
    iteration = Iteration(networks, rollout, kl_control, policy_trainer, value_trainer, frozen,
                          batch_size=batch_size, num_minibatches=num_minibatches,
                          ppo_epochs=ppo_epochs, next_ptx=next_ptx)

    prompt_iterator, next_prompts = jobs.train_batches(train_arrays, mesh, rules,
                                                       batch_size=batch_size, seed=seed)
    iterators = jobs.Iterators(prompts=prompt_iterator, **(
        {"pretraining": ptx_iterator} if ptx_iterator is not None else {}))

    def init():
        policy = policy_trainer.create_state(seed)
        lm = jax.tree.map(jnp.copy, reference)
        policy = policy.replace(params=lm if separate_value
                                else heads.with_trunk(policy.params, lm))
        value = None
        if separate_value:  # InstructGPT: the value model starts as the reward model
            value = value_trainer.create_state(seed).replace(
                params=jax.tree.map(jnp.copy, reward_params))
        # β and the key are replicated global arrays, as checkpoints of several hosts need.
        scalars = {"beta": np.float32(kl_control.init_beta),
                   "rng": np.asarray(jax.random.key_data(jax.random.key(seed + 1)))}
        scalars = partitioning.put_global(scalars, {k: partitioning.replicated(mesh)
                                                    for k in scalars})
        return PPOState(policy=policy, value=value, **scalars)

    abstract = _abstract_state(policy_trainer, value_trainer, mesh)
    run = train_loop.Run.open(model_dir, train_loop.Schedule(
        train_steps, log_every, eval_every, checkpoint_every, keep_checkpoints, progress_bar))
    state, start = run.restore_or_init(abstract, init, iterators)
    evaluate = None
    if eval_prompts:
        eval_arrays = _cycled(encode(eval_prompts), batch_size)
        placed = {k: partitioning.put_global(v, policy_trainer.batch_sharding)
                  for k, v in eval_arrays.items()}
        evaluate = lambda state: iteration.evaluate(state, placed, seed + 2)
    def export_policy(state):
        """The trained policy's language model as MODEL_DIR/params, which `infer`, `eval`,
        `best_of_n`, `convert` and a later `init_from` read (the checkpoints hold all of
        PPO's state)."""
        params = rollouts.language_model_params(networks, state.policy.params)
        checkpoints.save_params(str(run.model_dir / "params"), params)
        if train_loop.is_writer():
            metrics_lib.plot_metrics(str(run.model_dir), PLOTTED, "ppo.png")
        return state, {}

    return run.loop(state, start, iteration, next_prompts, iterators, evaluate=evaluate,
                    finish=export_policy)


def _experience_shapes(batch, prompt_length, response_length):
    tokens = lambda width: ((batch, width), np.int32)
    floats = ((batch, response_length), np.float32)
    return {"prompt": tokens(prompt_length), "prompt_lengths": ((batch,), np.int32),
            "response": tokens(response_length), "response_lengths": ((batch,), np.int32),
            "old_logprobs": floats, "old_values": floats, "advantages": floats,
            "returns": floats, "mask": floats}


def _abstract_state(policy_trainer, value_trainer, mesh) -> PPOState:
    repl = partitioning.replicated(mesh)
    return PPOState(
        policy=policy_trainer.abstract_state_with_shardings(),
        value=None if value_trainer is None else value_trainer.abstract_state_with_shardings(),
        beta=jax.ShapeDtypeStruct((), jnp.float32, sharding=repl),
        rng=jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=repl))


def _cycled(arrays, size):
    """The first `size` rows, cycling when there are fewer: one fixed-shape eval batch."""
    rows = len(arrays["prompt"])
    order = np.arange(size) % rows
    return {k: v[order] for k, v in arrays.items()}


def _ptx_batches(data, vocabulary, fmt, batch_size, feature_lengths, objective, mesh, rules,
                 seed):
    """PPO-ptx's pretraining batches: the pretraining pipeline itself, at its own size."""
    if data is None or not feature_lengths:
        raise ValueError("ptx_coef > 0 needs ptx_data and ptx_feature_lengths (PPO-ptx mixes "
                         "pretraining batches into the policy loss)")
    pieces, num_pieces = partitioning.batch_pieces(mesh, rules)
    dataset, _ = pipeline.make_sharded_dataset(
        data, vocabulary, pieces=pieces, num_pieces=num_pieces, feature_lengths=feature_lengths,
        batch_size=batch_size, objective=objective, model_format=fmt, seed=seed, shuffle=True,
        repeat=True, num_batches=None)
    iterator = iter(dataset)
    sharding = partitioning.batch_sharding(mesh, rules)

    def next_batch():
        return pipeline.global_batch(next(iterator), sharding, batch_size)

    shapes = converters.batch_shapes(fmt, feature_lengths, batch_size)
    return iterator, next_batch, shapes
