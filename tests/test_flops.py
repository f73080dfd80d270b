"""Model FLOPs (metrics.model_flops_per_step, what MFU divides by) against XLA's own count of
the compiled train step, for a decoder-only and an encoder-decoder model.

What is compared: `Trainer`'s jitted train step (forward, backward and AdamW update of one
batch) lowered and compiled for one CPU device, and `compiled.cost_analysis()["flops"]`:
XLA's HloCostAnalysis counts 2 FLOPs per multiply-add of every dot, forward and backward, plus
one per element of each elementwise op (norms, softmax, activations, the loss, the optimizer
update). The model count keeps only the matmuls (6 · N per token of the weights' inputs) and
attention (12 · L · H · Q · T per token, full T × T as PaLM counts it and as
`jax.nn.dot_product_attention` computes it), so XLA's count should be a few percent higher.
The layers are unrolled and not rematerialised: HloCostAnalysis counts a `while` loop's body
(a scanned stack) once, not once per layer, and recomputation adds hardware FLOPs that model
FLOPs deliberately leave out. Dimensions are those of gin_configs/models/decoder_tiny.gin and
t5_1_1_tiny.gin. Ratios measured: decoder 1.03; encoder-decoder 1.05 (1.14 before the
cross-attention keys and values were counted per encoder token).
"""
import numpy as np

from t5x_lite import metrics, optimizers, partitioning
from t5x_lite.models import decoder
from t5x_lite.models import encoder_decoder as ed
from t5x_lite.trainer import Trainer

BATCH = 2
DECODER_TINY = decoder.DecoderConfig(
    vocab_size=8320, embed_dim=256, num_layers=4, num_heads=4, num_kv_heads=2, head_dim=64,
    mlp_dim=768, mlp_activations=("silu", "linear"), scan_layers=False, remat_policy="none")
T5_TINY = ed.EncoderDecoderConfig(
    vocab_size=8320, embed_dim=256, num_encoder_layers=2, num_decoder_layers=2, num_heads=4,
    head_dim=64, mlp_dim=512, mlp_activations=("gelu", "linear"), scan_layers=False,
    remat_policy="none")


def xla_flops_and_params(model, lengths):
    """XLA's FLOP count of the compiled train step, and the abstract parameters."""
    shapes = {name: ((BATCH, length), np.float32 if name.endswith("weights") else np.int32)
              for name, length in lengths.items()}
    schedule = optimizers.constant(1e-3)
    trainer = Trainer(model, optimizers.adamw(schedule), schedule,
                      partitioning.make_mesh((1, 1, 1)), partitioning.DEFAULT_RULES,
                      batch_shapes=shapes)
    with trainer.context():
        compiled = trainer._train_step.lower(trainer.abstract_state_with_shardings(),
                                             trainer.abstract_batch).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost["flops"]), trainer.abstract_params


def check(model_flops, xla_flops):
    ratio = xla_flops / model_flops
    # XLA adds the elementwise work on top of the matmuls: above 1, within 10 %.
    assert 1.0 <= ratio <= 1.1, f"XLA {xla_flops:.4g} vs model {model_flops:.4g} ({ratio:.3f})"


def test_decoder_flops_match_the_compiled_step():
    length = 128
    model = decoder.DecoderLM(DECODER_TINY)
    names = ("decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights",
             "decoder_segment_ids", "decoder_positions")
    xla, params = xla_flops_and_params(model, {name: length for name in names})
    check(metrics.model_flops_per_step(model, params, {"targets": length}, BATCH), xla)


def test_encoder_decoder_flops_match_the_compiled_step():
    inputs, targets = 128, 32
    # Inputs 4x longer than targets (T5 pretraining: 512 vs 114), so weights that read the
    # encoder's tokens (the cross-attention keys and values) must count per input token.
    model = ed.EncoderDecoder(T5_TINY)
    lengths = {f"encoder_{f}": inputs for f in ("input_tokens", "segment_ids", "positions")}
    lengths.update({f"decoder_{f}": targets for f in (
        "input_tokens", "target_tokens", "loss_weights", "segment_ids", "positions")})
    xla, params = xla_flops_and_params(model, lengths)
    flops = metrics.model_flops_per_step(model, params, {"inputs": inputs, "targets": targets},
                                         BATCH)
    check(flops, xla)
