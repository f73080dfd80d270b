"""Train state and the jitted train / eval steps, sharded over a device mesh.

The state is created already sharded (`jax.jit` with `out_shardings`, never whole on one
device first). A train step is one jit with explicit input and output shardings that donates
the old state. Batches are T5X-style feature dicts: the model's inputs plus
`decoder_target_tokens` and `decoder_loss_weights` (an encoder-only masked LM's:
`encoder_target_tokens` and `encoder_loss_weights`).
"""
from __future__ import annotations

import contextlib
import functools
from typing import Any, Callable, Mapping

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from t5x_lite import losses, partitioning
from t5x_lite.data import feature_converters as converters

Batch = Mapping[str, jax.Array]
# (targets, loss weights) of each layout; none of them is a model input.
TARGET_PAIRS = (("decoder_target_tokens", "decoder_loss_weights"),
                ("encoder_target_tokens", "encoder_loss_weights"),
                converters.NEXT_SENTENCE_TARGETS)
TARGET_FEATURES = tuple(name for pair in TARGET_PAIRS for name in pair)


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array  # raw uint32 key data: checkpoints hold plain arrays


def model_inputs(batch: Batch) -> dict[str, jax.Array]:
    """The features the model consumes: everything except the targets and their weights."""
    return {k: v for k, v in batch.items() if k not in TARGET_FEATURES}


def targets_and_weights(batch: Batch) -> tuple[jax.Array, jax.Array]:
    """The batch's target tokens and float32 loss weights: the decoder's, or an encoder-only
    masked LM's (whose model output is aligned with its inputs, so the same loss applies)."""
    for targets, weights in TARGET_PAIRS:
        if targets in batch:
            return batch[targets], batch[weights].astype(jnp.float32)
    raise KeyError(f"the batch has no targets: expected one of {TARGET_PAIRS}, got "
                   f"{sorted(batch)}")


class TokenCrossEntropy:
    """The language-modelling loss: summed cross entropy (with label smoothing and z-loss)
    over the target tokens, normalised by the global number of target tokens.

    Every loss a `Trainer` takes has this shape: `init_inputs(module, batch)` (model inputs
    to build the parameters from), `sums(module, params, batch, dropout_rng)` → (summed loss, summed
    metrics), the name of the sum the gradients are divided by (`denominator`; None for a
    loss that is already a mean, which then cannot be split into microbatches) and
    `normalise(sums)` → the logged metrics. Reward models, DPO and PPO bring their own.
    """

    denominator = "tokens"

    def __init__(self, label_smoothing: float = 0.0, z_loss: float = 0.0,
                 chunk_size: int | None = None):
        self.label_smoothing = label_smoothing
        self.z_loss = z_loss
        self.chunk_size = chunk_size  # positions per chunk of logits (losses.py); None: whole

    def init_inputs(self, module, batch: Batch) -> dict[str, jax.Array]:
        return model_inputs(batch)

    def sums(self, module, params, batch, dropout_rng):
        rngs = None if dropout_rng is None else {"dropout": dropout_rng}
        variables = {"params": params}
        if self.chunk_size:
            states = module.apply(variables, **model_inputs(batch), outputs="hidden",
                                  deterministic=dropout_rng is None, rngs=rngs)
            sums = self.token_sums(module, variables, batch, states=states)
        else:
            logits = module.apply(variables, **model_inputs(batch),
                                  deterministic=dropout_rng is None, rngs=rngs)
            sums = self.token_sums(module, variables, batch, logits=logits)
        return sums["loss"], sums

    def token_sums(self, module, variables, batch, *, states=None, logits=None):
        """Summed loss, z-loss, correct tokens and target tokens from the logits, or from
        the final states a chunk of positions at a time (`chunk_size`)."""
        targets, weights = targets_and_weights(batch)
        settings = dict(label_smoothing=self.label_smoothing, z_loss=self.z_loss)
        if logits is None and self.chunk_size:
            project = lambda s: module.apply(variables, s, method="project")
            token_loss, z_term, correct = losses.chunked_token_losses(
                project, states, targets, chunk_size=self.chunk_size, **settings)
        else:
            if logits is None:
                logits = module.apply(variables, states, method="project")
            token_loss, z_term, correct = losses.token_losses(logits, targets, **settings)
        return {
            "loss": jnp.sum(token_loss * weights),
            "z_loss": jnp.sum(z_term * weights),
            "correct": jnp.sum(correct.astype(jnp.float32) * weights),
            "tokens": jnp.sum(weights),
        }

    @staticmethod
    def normalise(sums: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
        tokens = jnp.maximum(sums["tokens"], 1.0)
        return {
            "loss": sums["loss"] / tokens,
            "z_loss": sums["z_loss"] / tokens,
            "accuracy": sums["correct"] / tokens,
            "target_tokens": sums["tokens"],
        }


class MaskedLMAndNextSentence(TokenCrossEntropy):
    """BERT's pretraining loss: the mean masked-LM loss over the selected tokens plus the
    mean next-sentence loss over the sentence pairs (Devlin et al. 2019, appendix A.2: "the
    sum of the mean masked LM likelihood and the mean next sentence prediction
    likelihood"). Both means are over the whole batch, so the loss is a mean (no
    microbatches). Logged: `loss` (the masked LM's, as without NSP), `next_sentence_loss`,
    `next_sentence_accuracy` and `pretraining_loss` (their sum, the one minimised)."""

    denominator = None

    def sums(self, module, params, batch, dropout_rng):
        rngs = None if dropout_rng is None else {"dropout": dropout_rng}
        variables = {"params": params}
        states = module.apply(variables, **model_inputs(batch), outputs="hidden",
                              deterministic=dropout_rng is None, rngs=rngs)
        sums = self.token_sums(module, variables, batch, states=states)
        logits = module.apply(variables, states, method="next_sentence_logits")
        labels_name, weights_name = converters.NEXT_SENTENCE_TARGETS
        labels, weights = batch[labels_name], batch[weights_name].astype(jnp.float32)
        pair_loss, _ = losses.cross_entropy_with_logits(logits, labels)
        correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
        sums.update(next_sentence_loss=jnp.sum(pair_loss * weights),
                    next_sentence_correct=jnp.sum(correct * weights), pairs=jnp.sum(weights))
        return self.normalise(sums)["pretraining_loss"], sums

    @staticmethod
    def normalise(sums: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
        metrics = {**TokenCrossEntropy.normalise(sums), **next_sentence_metrics(sums)}
        metrics["pretraining_loss"] = metrics["loss"] + metrics["next_sentence_loss"]
        return metrics


def next_sentence_metrics(sums: Mapping[str, Any]) -> dict[str, Any]:
    """Mean next-sentence loss and accuracy over the pairs of summed metrics."""
    pairs = jnp.maximum(sums["pairs"], 1.0)
    return {"next_sentence_loss": sums["next_sentence_loss"] / pairs,
            "next_sentence_accuracy": sums["next_sentence_correct"] / pairs}


class Trainer:
    """Builds the sharded train state and the compiled train and eval steps for one model and
    one loss (default: `TokenCrossEntropy(label_smoothing, z_loss, loss_chunk_size)`; 'auto'
    chunks the logits of large vocabularies, losses.default_chunk_size)."""

    def __init__(
        self,
        module: nn.Module,
        optimizer: optax.GradientTransformation,
        learning_rate: Callable[[jax.Array], jax.Array],
        mesh: Mesh,
        logical_axis_rules: partitioning.LogicalRules,
        *,
        batch_shapes: Mapping[str, tuple[tuple[int, ...], Any]],
        label_smoothing: float = 0.0,
        z_loss: float = 0.0,
        num_microbatches: int = 1,
        loss_chunk_size: int | str | None = "auto",
        loss=None,
    ):
        self.module = module
        if loss is None:
            if loss_chunk_size == "auto":
                loss_chunk_size = losses.default_chunk_size(module.config.vocab_size)
            pairs = converters.NEXT_SENTENCE_TARGETS[0] in batch_shapes
            loss = (MaskedLMAndNextSentence if pairs else TokenCrossEntropy)(
                label_smoothing, z_loss, loss_chunk_size)
        self.loss = loss
        if self.loss.denominator is None and num_microbatches != 1:
            raise ValueError(f"{type(self.loss).__name__} is a mean over its batch: it cannot "
                             "be accumulated over microbatches")
        self.optimizer = optimizer
        self.learning_rate = learning_rate
        self.mesh = mesh
        self.rules = tuple(tuple(r) for r in logical_axis_rules)
        self.num_microbatches = num_microbatches
        batch_size = self.batch_size = next(iter(batch_shapes.values()))[0][0]
        if batch_size % num_microbatches:
            raise ValueError(
                f"batch size {batch_size} is not a multiple of num_microbatches={num_microbatches}"
            )
        self.abstract_batch = {
            k: jax.ShapeDtypeStruct(shape, dtype) for k, (shape, dtype) in batch_shapes.items()
        }
        self.batch_sharding = partitioning.batch_sharding(mesh, self.rules)
        self._init_shapes()
        self._train_step = jax.jit(
            self._train_step_impl,
            in_shardings=(self.state_shardings, self.batch_sharding),
            out_shardings=(self.state_shardings, partitioning.replicated(mesh)),
            donate_argnums=0,
        )
        self._eval_step = jax.jit(
            self._eval_step_impl,
            in_shardings=(self.state_shardings.params, self.batch_sharding),
            out_shardings=partitioning.replicated(mesh),
        )

    # ----------------------------------------------------------------------- state
    def _init_params_boxed(self, rng):
        init_batch = {k: jnp.zeros(v.shape, v.dtype) for k, v in self.abstract_batch.items()}
        return self.module.init(rng, **self.loss.init_inputs(self.module, init_batch))["params"]

    def _init_shapes(self):
        with self.context():
            boxed = jax.eval_shape(lambda: self._init_params_boxed(jax.random.key(0)))
        params_shardings = partitioning.param_shardings(boxed, self.mesh, self.rules)
        self.abstract_params = nn.unbox(boxed)
        abstract_opt_state = jax.eval_shape(self.optimizer.init, self.abstract_params)
        repl = partitioning.replicated(self.mesh)
        self.state_shardings = TrainState(
            step=repl,
            params=params_shardings,
            opt_state=partitioning.optimizer_state_shardings(
                self.optimizer, abstract_opt_state, self.abstract_params, params_shardings,
                self.mesh,
            ),
            rng=repl,
        )
        self.abstract_state = TrainState(
            step=jax.ShapeDtypeStruct((), jnp.int32),
            params=self.abstract_params,
            opt_state=abstract_opt_state,
            rng=jax.ShapeDtypeStruct((2,), jnp.uint32),
        )

    def abstract_state_with_shardings(self) -> TrainState:
        """ShapeDtypeStructs carrying target shardings: what a checkpoint is restored into."""
        return jax.tree.map(
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
            self.abstract_state,
            self.state_shardings,
        )

    def abstract_batch_with_sharding(self) -> dict[str, jax.ShapeDtypeStruct]:
        return {name: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=self.batch_sharding)
                for name, x in self.abstract_batch.items()}

    def lower_train_step(self) -> jax.stages.Lowered:
        """The train step lowered for the abstract state and batch, nothing materialised:
        `.compile()` it for the mesh's devices, TPUs described on a CPU host included
        (aot.py)."""
        with self.context():
            return self._train_step.lower(self.abstract_state_with_shardings(),
                                          self.abstract_batch_with_sharding())

    def create_state(self, seed: int) -> TrainState:
        def init(seed):
            init_rng, dropout_rng = jax.random.split(jax.random.key(seed))
            params = nn.unbox(self._init_params_boxed(init_rng))
            return TrainState(
                step=jnp.zeros((), jnp.int32),
                params=params,
                opt_state=self.optimizer.init(params),
                rng=jax.random.key_data(dropout_rng),
            )

        with self.context():
            return jax.jit(init, out_shardings=self.state_shardings)(seed)

    def context(self):
        """The mesh and logical-axis rules its steps run under (activation shardings)."""
        return mesh_and_rules(self.mesh, self.rules)

    # ----------------------------------------------------------------------- steps
    def _loss_sums(self, params, batch, dropout_rng):
        return self.loss.sums(self.module, params, batch, dropout_rng)

    def _microbatches(self, x: jax.Array) -> jax.Array:
        """[batch, ...] → [microbatches, batch / microbatches, ...], microbatch m holding rows
        m, m + M, m + 2M, ...: every data shard's contiguous block of rows gives each
        microbatch rows it already holds, so slicing moves nothing between devices (a
        contiguous split would gather each microbatch from a few shards)."""
        count = self.num_microbatches
        return jnp.swapaxes(x.reshape((-1, count) + x.shape[1:]), 0, 1)

    def _train_step_impl(self, state: TrainState, batch: Batch):
        dropout_rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
        grad_fn = jax.grad(self._loss_sums, has_aux=True)

        if self.num_microbatches == 1:
            grads, sums = grad_fn(state.params, batch, dropout_rng)
        else:
            micro = jax.tree.map(self._microbatches, batch)

            def accumulate(carry, inputs):
                index, microbatch = inputs
                grads, sums = grad_fn(state.params, microbatch, jax.random.fold_in(dropout_rng, index))
                return jax.tree.map(jnp.add, carry, (grads, sums)), None

            shapes = jax.eval_shape(grad_fn, state.params, jax.tree.map(lambda x: x[0], micro),
                                    dropout_rng)
            zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
            (grads, sums), _ = jax.lax.scan(
                accumulate, zeros, (jnp.arange(self.num_microbatches), micro)
            )

        # Normalise by the loss's count (target tokens for an LM) over the global batch.
        if self.loss.denominator is not None:
            denominator = jnp.maximum(sums[self.loss.denominator], 1.0)
            grads = jax.tree.map(lambda g: g / denominator, grads)
        updates, opt_state = self.optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = dict(self.loss.normalise(sums))
        metrics["grad_norm"] = optax.tree.norm(grads)
        metrics["param_norm"] = optax.tree.norm(params)  # NaN here: the update broke them
        metrics["learning_rate"] = jnp.asarray(self.learning_rate(state.step), jnp.float32)
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
        return new_state, metrics

    def _eval_step_impl(self, params, batch):
        _, sums = self._loss_sums(params, batch, None)
        return sums

    def train_step(self, state: TrainState, batch: Batch) -> tuple[TrainState, dict]:
        with self.context():
            return self._train_step(state, batch)

    def eval_step(self, params, batch: Batch) -> dict:
        """Summed (not averaged) loss/correct/tokens, so callers can pool several batches."""
        with self.context():
            return self._eval_step(params, batch)

    def logits(self, params, batch: Batch) -> jax.Array:
        with self.context():
            return _jit_apply(self.module)(params, model_inputs(batch))


def summarize_eval(sums: Mapping[str, float]) -> dict[str, float]:
    """Pooled eval sums → loss (the cross entropy, without the z-loss regulariser, so it does
    not depend on the run's z_loss setting and `t5x-lite eval` reports what training logged),
    perplexity, accuracy, and the z-loss term on its own."""
    tokens = max(float(sums["tokens"]), 1.0)
    cross_entropy = (float(sums["loss"]) - float(sums["z_loss"])) / tokens
    summary = {
        "loss": cross_entropy,
        "perplexity": float(np.exp(cross_entropy)),
        "accuracy": float(sums["correct"]) / tokens,
        "z_loss": float(sums["z_loss"]) / tokens,
        "target_tokens": tokens,
    }
    if "pairs" in sums:  # BERT's next-sentence prediction (MaskedLMAndNextSentence)
        summary.update({k: float(v) for k, v in next_sentence_metrics(sums).items()})
    return summary


@functools.lru_cache(maxsize=8)
def _jit_apply(module):
    return jax.jit(lambda params, inputs: module.apply({"params": params}, **inputs))


@contextlib.contextmanager
def mesh_and_rules(mesh: Mesh, rules: partitioning.LogicalRules):
    """The mesh and logical-axis rules that activation constraints resolve against."""
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        yield
