"""Schedules against their formulas; AdamW and Adafactor against numpy versions of the update
rules written from the papers (not from optax); weight decay and Adafactor's statistics
decided by parameter paths, so a scanned and an unrolled model train identically."""
import dataclasses
import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util

from t5x_lite import optimizers, partitioning
from t5x_lite.models import decoder, stacking
from t5x_lite.models import encoder_decoder as ed
from t5x_lite.trainer import Trainer

STEPS = [0, 1, 2, 7, 50, 99, 100, 101, 250, 999, 1000, 1001, 5000]


def lr_at(schedule, step):
    return float(schedule(jnp.asarray(step, jnp.int32)))


# ------------------------------------------------------------------------------- schedules
def test_constant_schedule():
    schedule = optimizers.constant(3e-4)
    for step in STEPS:
        assert lr_at(schedule, step) == pytest.approx(3e-4)


@pytest.mark.parametrize("end_fraction", [0.1, 0.0])
def test_warmup_cosine_matches_formula(end_fraction):
    peak, warmup, decay = 2e-3, 100, 1000
    schedule = optimizers.warmup_cosine(peak, warmup, decay, end_fraction=end_fraction)
    end = end_fraction * peak

    def expected(step):
        if step <= warmup:
            return peak * step / warmup
        progress = min(step - warmup, decay - warmup) / (decay - warmup)
        return end + (peak - end) * 0.5 * (1 + math.cos(math.pi * progress))

    for step in STEPS:
        assert lr_at(schedule, step) == pytest.approx(expected(step), rel=1e-5, abs=1e-9), step
    assert lr_at(schedule, 0) == 0.0
    assert lr_at(schedule, warmup) == pytest.approx(peak)
    assert lr_at(schedule, decay) == pytest.approx(end, abs=1e-9)
    assert lr_at(schedule, 10 * decay) == pytest.approx(end, abs=1e-9)  # stays at the floor


def test_warmup_cosine_with_decay_no_longer_than_warmup_still_works():
    schedule = optimizers.warmup_cosine(1e-3, warmup_steps=50, decay_steps=50)
    values = [lr_at(schedule, step) for step in range(0, 120, 10)]
    assert all(math.isfinite(v) for v in values)
    assert lr_at(schedule, 50) == pytest.approx(1e-3)


@pytest.mark.parametrize("warmup, scale", [(10_000, 1.0), (100, 0.5)])
def test_rsqrt_decay_is_flat_then_inverse_sqrt(warmup, scale):
    schedule = optimizers.rsqrt_decay(warmup_steps=warmup, scale=scale)
    for step in STEPS + [warmup - 1, warmup, warmup + 1, 4 * warmup, 100 * warmup]:
        expected = scale / math.sqrt(max(step, warmup))
        assert lr_at(schedule, step) == pytest.approx(expected, rel=1e-6), step
    flat = {lr_at(schedule, step) for step in (0, 1, warmup // 2, warmup)}
    assert len(flat) == 1  # flat during warmup (T5: 0.01 for 10k steps)
    assert lr_at(schedule, 4 * warmup) == pytest.approx(lr_at(schedule, warmup) / 2)


def test_rsqrt_decay_accepts_a_python_int_step():
    assert float(optimizers.rsqrt_decay(100)(400)) == pytest.approx(0.05)


# ----------------------------------------------------------------------------------- AdamW
def run_steps(tx, params, grads_per_step):
    update = jax.jit(tx.update)
    state = jax.jit(tx.init)(params)
    for grads in grads_per_step:
        updates, state = update(grads, state, params)
        params = optax.apply_updates(params, updates)
    return params, state


def test_adamw_decays_kernels_but_not_scales_or_biases_whatever_their_rank():
    lr, weight_decay = 0.1, 0.5
    params = {"norm": {"scale": jnp.ones(4)}, "dense": {"bias": jnp.full(4, 2.0),
                                                        "kernel": jnp.ones((3, 4))},
              "layers": {"norm": {"scale": jnp.ones((2, 4))},  # scanned: 2-D, not decayed
                         "dense": {"bias": jnp.full((2, 4), 2.0),
                                   "kernel": jnp.ones((2, 3, 4))}}}
    zero_grads = jax.tree.map(jnp.zeros_like, params)
    new, _ = run_steps(optimizers.adamw(lr, weight_decay=weight_decay), params, [zero_grads])
    for block in (new, new["layers"]):
        original = params if block is new else params["layers"]
        np.testing.assert_array_equal(block["norm"]["scale"], original["norm"]["scale"])
        np.testing.assert_array_equal(block["dense"]["bias"], original["dense"]["bias"])
        np.testing.assert_allclose(block["dense"]["kernel"],
                                   original["dense"]["kernel"] * (1 - lr * weight_decay),
                                   rtol=1e-6)


def reference_adamw(params, grads_per_step, *, lr, b1, b2, eps, weight_decay, clip_norm):
    """AdamW (Loshchilov & Hutter 2019) after global-norm clipping, float64; weight decay
    only on the keys named `kernel`."""
    params = {k: np.asarray(v, np.float64) for k, v in params.items()}
    m = {k: np.zeros_like(v) for k, v in params.items()}
    v = {k: np.zeros_like(p) for k, p in params.items()}
    for t, grads in enumerate(grads_per_step, 1):
        norm = math.sqrt(sum(float(np.sum(np.square(g))) for g in grads.values()))
        factor = min(1.0, clip_norm / norm)
        for k, g in grads.items():
            g = np.asarray(g, np.float64) * factor
            m[k] = b1 * m[k] + (1 - b1) * g
            v[k] = b2 * v[k] + (1 - b2) * g * g
            step = (m[k] / (1 - b1**t)) / (np.sqrt(v[k] / (1 - b2**t)) + eps)
            decay = weight_decay * params[k] if k == "kernel" else 0.0
            params[k] = params[k] - lr * (step + decay)
    return params


def test_adamw_matches_reference_with_clipping():
    rng = np.random.default_rng(0)
    params = {"kernel": rng.normal(size=(4, 3)), "bias": rng.normal(size=3)}
    # Gradients of very different norms: the big ones are clipped to norm 1.
    grads_per_step = [{k: scale * rng.normal(size=p.shape) for k, p in params.items()}
                      for scale in (0.01, 50.0, 0.2, 1000.0)]
    hyper = dict(lr=0.01, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1, clip_norm=1.0)
    got, _ = run_steps(
        optimizers.adamw(hyper["lr"], b1=hyper["b1"], b2=hyper["b2"], eps=hyper["eps"],
                         weight_decay=hyper["weight_decay"], clip_norm=hyper["clip_norm"]),
        jax.tree.map(jnp.float32, params),
        [jax.tree.map(jnp.float32, g) for g in grads_per_step])
    expected = reference_adamw(params, grads_per_step, **hyper)
    for key in params:
        np.testing.assert_allclose(got[key], expected[key], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("grad_norm", [0.5, 3.0, 300.0])
def test_clipping_bounds_the_global_norm(grad_norm):
    # With b1 = b2 = 0 and a huge eps, Adam's step is g / (|g| + eps) ≈ g / eps: linear in
    # the (clipped) gradient, so the update's norm shows the gradient's norm after clipping.
    eps, clip_norm = 1e6, 1.0
    tx = optimizers.adamw(1.0, b1=0.0, b2=0.0, eps=eps, weight_decay=0.0, clip_norm=clip_norm)
    direction = {"bias": jnp.array([3.0, 4.0]), "kernel": jnp.ones((2, 2))}
    norm = float(optax.tree.norm(direction))
    grads = jax.tree.map(lambda g: g * grad_norm / norm, direction)
    params = jax.tree.map(jnp.zeros_like, direction)
    updates, _ = tx.update(grads, tx.init(params), params)
    assert float(optax.tree.norm(updates)) * eps == pytest.approx(
        min(grad_norm, clip_norm), rel=1e-4)


def test_adamw_without_clipping_passes_large_gradients():
    eps = 1e6
    tx = optimizers.adamw(1.0, b1=0.0, b2=0.0, eps=eps, weight_decay=0.0, clip_norm=None)
    grads = {"bias": jnp.array([30.0, 40.0])}
    updates, _ = tx.update(grads, tx.init(grads), grads)
    assert float(optax.tree.norm(updates)) * eps == pytest.approx(50.0, rel=1e-4)


# ------------------------------------------------------------------------------- Adafactor
def reference_adafactor(param, grads, *, lr, min_dim_size_to_factor=128, scanned=False,
                        decay_exponent=0.8, eps1=1e-30, eps2=1e-3, clipping_threshold=1.0):
    """Adafactor as Shazeer & Stern (2018) write it, in numpy float64.

    Algorithm 4 (a matrix: row sums R = G²1, column sums C = 1ᵀG², V̂ = RC / 1ᵀR) or 5 (a
    vector, or a matrix with a dimension under `min_dim_size_to_factor`: full V), with
    β̂₂ₜ = 1 - t^-0.8, update clipping U / max(1, RMS(U) / d) (section 6) and the relative
    step α = max(ε₂, RMS(X)) ρ with ρ = lr (section 8); no momentum. A scanned leaf
    [layers, ...] is one independent parameter per layer (T5X: `layers` is a batch axis).
    Returns the final parameter and how many updates were clipped.
    """
    if scanned:
        per_layer = [reference_adafactor(
            layer, [g[i] for g in grads], lr=lr, min_dim_size_to_factor=min_dim_size_to_factor,
            decay_exponent=decay_exponent, eps1=eps1, eps2=eps2,
            clipping_threshold=clipping_threshold) for i, layer in enumerate(param)]
        return np.stack([x for x, _ in per_layer]), sum(n for _, n in per_layer)
    x = np.array(param, np.float64)
    factored = x.ndim == 2 and min(x.shape) >= min_dim_size_to_factor
    row, col, full = np.zeros(x.shape[0]), np.zeros(x.shape[-1]), np.zeros_like(x)
    clipped = 0
    for t, g in enumerate(grads, 1):
        g = np.asarray(g, np.float64)
        beta = 1.0 - t**-decay_exponent
        g2 = g * g + eps1
        if factored:
            row = beta * row + (1 - beta) * g2.sum(axis=1)
            col = beta * col + (1 - beta) * g2.sum(axis=0)
            v_hat = np.outer(row, col) / row.sum()
        else:
            full = beta * full + (1 - beta) * g2
            v_hat = full
        u = g / np.sqrt(v_hat)
        rms_u = np.sqrt(np.mean(u * u))
        clipped += bool(rms_u > clipping_threshold)
        u = u / max(1.0, rms_u / clipping_threshold)
        x = x - lr * max(eps2, np.sqrt(np.mean(x * x))) * u
    return x, clipped


def test_adafactor_matches_the_paper_on_matrices_vectors_and_scanned_stacks():
    rng = np.random.default_rng(0)
    # Layers of very different scales: parameter scale and clipping must be per layer (the
    # first is below ε₂ = 1e-3). Each layer of the scanned kernel is a factored [3, 4]
    # matrix, although the layer axis (6) is the kernel's largest.
    layer_scale = np.array([1e-4, 0.3, 2.0, 1.0, 0.05, 5.0])
    params = {
        "lm_head": {"kernel": rng.normal(size=(5, 7))},  # factored
        "narrow": {"kernel": rng.normal(size=(2, 7))},  # 2 < 3: full second moment
        "final_norm": {"scale": 1 + 0.1 * rng.normal(size=7)},
        "layers": {"mlp": {"kernel": rng.normal(size=(6, 3, 4)) * layer_scale[:, None, None]},
                   "norm": {"scale": rng.normal(size=(6, 4)) * layer_scale[:, None]}},
    }
    scanned = {("layers", "mlp", "kernel"), ("layers", "norm", "scale")}
    grad_layer_scale = np.array([3.0, 0.1, 1.0, 20.0, 1.0, 0.5])
    grads = []
    for scale in (1.0, 0.01, 30.0, 1.0, 0.1):  # small then large gradients: clipping acts
        g = {p: scale * rng.normal(size=x.shape) for p, x in flat(params).items()}
        for p in scanned:
            g[p] = g[p] * grad_layer_scale.reshape((-1,) + (1,) * (g[p].ndim - 1))
        grads.append(g)
    lr, min_dim = 0.05, 3

    tx = optimizers.adafactor(lr, min_dim_size_to_factor=min_dim)
    as_tree = lambda d: jax.tree.map(jnp.float32, traverse_util.unflatten_dict(d))
    got, state = run_steps(tx, as_tree(flat(params)), [as_tree(g) for g in grads])
    total_clipped = 0
    for path, x in flat(params).items():
        expected, clipped = reference_adafactor(
            x, [g[path] for g in grads], lr=lr, min_dim_size_to_factor=min_dim,
            scanned=path in scanned)
        total_clipped += clipped
        np.testing.assert_allclose(flat(got)[path], expected, rtol=2e-5, atol=1e-9,
                                   err_msg="/".join(path))
    assert 0 < total_clipped < 5 * len(flat(params))  # some updates clipped, not all

    # Per-layer statistics, a single step count.
    v_row = flat(optax.tree_utils.tree_get(state, "v_row"))
    v_col = flat(optax.tree_utils.tree_get(state, "v_col"))
    assert {v_row[("layers", "mlp", "kernel")].shape,
            v_col[("layers", "mlp", "kernel")].shape} == {(6, 3), (6, 4)}
    counts = optax.tree_utils.tree_get_all_with_path(state, "count")
    assert counts and all(np.shape(c) == () and int(c) == len(grads) for _, c in counts)

    # What the paper's rule is not: optax's Adafactor on the whole stacked leaf.
    whole, _ = run_steps(optax.adafactor(lr, min_dim_size_to_factor=min_dim),
                         as_tree(flat(params)), [as_tree(g) for g in grads])
    assert not np.allclose(flat(whole)[("layers", "mlp", "kernel")],
                           flat(got)[("layers", "mlp", "kernel")], rtol=1e-3)


def test_adafactor_factors_second_moments_of_large_matrices():
    params = {
        "big": jnp.zeros((128, 256)),    # both dims >= 128: a row and a column vector
        "narrow": jnp.zeros((127, 256)),  # second-largest dim < 128: full second moment
        "vector": jnp.zeros((256,)),
    }
    state = optimizers.adafactor(1e-2).init(params)
    v_row = optax.tree_utils.tree_get(state, "v_row")
    v_col = optax.tree_utils.tree_get(state, "v_col")
    v = optax.tree_utils.tree_get(state, "v")
    assert v_row["big"].shape == (128,) and v_col["big"].shape == (256,)
    assert v["big"].size == 1  # placeholder
    assert v["narrow"].shape == (127, 256) and v_row["narrow"].size == 1
    assert v["vector"].shape == (256,)


def test_adafactor_first_step_moves_each_weight_by_lr_times_param_rms():
    # Step 1 has no history (decay 0): the update is sign(g), of RMS 1, so it is not clipped.
    param = np.array([[3.0, -4.0, 0.0], [1.0, 2.0, -2.0]])
    grad = np.array([[0.5, -2.0, 1e-3], [-7.0, 0.1, 0.2]])
    lr = 0.1
    got, _ = run_steps(optimizers.adafactor(lr), {"w": jnp.float32(param)},
                       [{"w": jnp.float32(grad)}])
    rms = np.sqrt(np.mean(param**2))
    np.testing.assert_allclose(got["w"], param - lr * rms * np.sign(grad), rtol=1e-5)


def test_adafactor_global_norm_clipping_is_optional_and_applied_first():
    # Adafactor normalises the gradient, so clipping by global norm shows only through the
    # second-moment history: a huge first gradient, unclipped, shrinks the second step.
    param = {"w": jnp.ones((2, 3))}
    grads = [{"w": jnp.full((2, 3), 100.0)}, {"w": jnp.full((2, 3), 0.1)}]
    unclipped, _ = run_steps(optimizers.adafactor(0.1), param, grads)
    clipped, _ = run_steps(optimizers.adafactor(0.1, clip_norm=1.0), param, grads)
    clipped_grads = [g["w"] * min(1.0, 1.0 / np.sqrt(np.sum(np.square(g["w"]))))
                     for g in grads]
    expected, _ = reference_adafactor(np.ones((2, 3)), clipped_grads, lr=0.1)
    np.testing.assert_allclose(clipped["w"], expected, rtol=1e-5)
    assert not np.allclose(clipped["w"], unclipped["w"])


def test_per_layer_equals_one_inner_transformation_per_layer():
    """The wrapper itself, on a momentum optimizer with a schedule: a scanned leaf's update
    is exactly the stack of what each layer, optimised as its own leaf, gets."""
    schedule = optimizers.warmup_cosine(0.1, warmup_steps=2, decay_steps=6)
    inner = optax.adafactor(schedule, min_dim_size_to_factor=2, momentum=0.9)
    rng = np.random.default_rng(3)
    stacked = {"layers": {"w": {"kernel": jnp.float32(rng.normal(size=(3, 4, 5)))}}}
    grads = [jax.tree.map(lambda x: jnp.float32(rng.normal(size=x.shape)), stacked)
             for _ in range(4)]
    got, _ = run_steps(optimizers.per_layer(inner), stacked, grads)
    split = lambda tree: {f"layers_{i}": {"w": {"kernel": tree["layers"]["w"]["kernel"][i]}}
                          for i in range(3)}
    expected, _ = run_steps(inner, split(stacked), [split(g) for g in grads])
    for i in range(3):
        np.testing.assert_allclose(got["layers"]["w"]["kernel"][i],
                                   expected[f"layers_{i}"]["w"]["kernel"], rtol=1e-6)


# --------------------------------------------------------- paths decide: masks and stacks
GPT = decoder.DecoderConfig(vocab_size=64, embed_dim=16, num_layers=3, num_heads=2,
                            head_dim=8, mlp_dim=32, mlp_activations=("gelu",),
                            norm_type="layernorm", position_embedding="learned", max_length=16,
                            tie_embeddings=True, use_bias=True)
LLAMA = decoder.DecoderConfig(vocab_size=64, embed_dim=16, num_layers=2, num_heads=2,
                              num_kv_heads=1, head_dim=8, mlp_dim=32)
# Encoder and decoder stacks of different depths: their scanned leaves are vmapped apart.
T5 = ed.EncoderDecoderConfig(vocab_size=64, embed_dim=16, num_encoder_layers=1,
                             num_decoder_layers=2, num_heads=2, head_dim=8, mlp_dim=32,
                             relative_attention_num_buckets=8,
                             relative_attention_max_distance=16)
LENGTH = 8


def with_scan(config, scan):
    return dataclasses.replace(config, scan_layers=scan)


def make_model(config):
    return (ed.EncoderDecoder if isinstance(config, ed.EncoderDecoderConfig)
            else decoder.DecoderLM)(config)


def _init(model):
    tokens = jnp.ones((1, LENGTH), jnp.int32)
    args = (tokens, tokens) if isinstance(model, ed.EncoderDecoder) else (tokens,)
    return lambda: nn.unbox(model.init(jax.random.key(0), *args)["params"])


@functools.lru_cache(maxsize=None)
def init_params(model):
    return jax.jit(_init(model))()


def abstract_params(model):
    """Shapes and paths only: what the masks look at (no compile)."""
    return jax.eval_shape(_init(model))


def flat(tree):
    return traverse_util.flatten_dict(dict(tree))


@pytest.mark.parametrize("config", [GPT, LLAMA, T5], ids=["gpt", "llama", "t5"])
@pytest.mark.parametrize("scan", [True, False], ids=["scanned", "unrolled"])
def test_decay_mask_decays_kernels_and_embeddings_only(config, scan):
    params = abstract_params(make_model(with_scan(config, scan)))
    mask = flat(optimizers.decay_mask(params))
    for path, decayed in mask.items():
        assert decayed == (path[-1] in ("kernel", "embedding")), path
    # The regression: a scanned stack's norm scales and biases are 2-D, yet never decayed.
    stacked_vectors = [p for p, x in flat(params).items() if "layers" in p and x.ndim == 2
                       and p[-1] in ("scale", "bias")]
    assert bool(stacked_vectors) == scan
    assert not any(mask[p] for p in stacked_vectors)
    names = {p[-1] for p in mask}
    assert {"scale", "kernel", "embedding"} <= names
    if config is GPT:
        assert "bias" in names
    if config is T5:
        assert not mask[("encoder", "relpos_bias", "rel_embedding")]


def test_decay_mask_rejects_an_unknown_parameter_name():
    with pytest.raises(ValueError, match="no rule for parameter 'block/w'"):
        optimizers.decay_mask({"block": {"w": jnp.ones((2, 2))}})


@pytest.mark.parametrize("config", [LLAMA, T5], ids=["decoder", "t5"])
def test_scanned_mask_marks_the_leaves_of_scanned_stacks(config):
    params = abstract_params(make_model(with_scan(config, True)))
    depths = ({"encoder": T5.num_encoder_layers, "decoder": T5.num_decoder_layers}
              if config is T5 else {"layers": config.num_layers})
    for path, is_scanned in flat(optimizers.scanned_mask(params)).items():
        assert is_scanned == ("layers" in path), path
        if is_scanned:  # the leading axis is the stack's depth
            assert flat(params)[path].shape[0] == depths[path[0]], path
    unrolled = abstract_params(make_model(with_scan(config, False)))
    assert not any(jax.tree.leaves(optimizers.scanned_mask(unrolled)))


def test_adamw_zero_gradient_step_decays_only_kernels_and_embeddings_of_a_scanned_model():
    lr, weight_decay = 0.1, 0.5
    params = init_params(make_model(GPT))
    zeros = jax.tree.map(jnp.zeros_like, params)
    new, _ = run_steps(optimizers.adamw(lr, weight_decay=weight_decay), params, [zeros])
    for path, before in flat(params).items():
        after = flat(new)[path]
        if path[-1] in ("scale", "bias"):
            np.testing.assert_array_equal(after, before, err_msg=str(path))
        else:
            np.testing.assert_allclose(after, before * (1 - lr * weight_decay), rtol=1e-6)


# ------------------------------------------------------- scanned and unrolled train alike
def loss_fn(model):
    def loss(params, batch):
        if isinstance(model, ed.EncoderDecoder):
            logits = model.apply({"params": params}, batch["inputs"], batch["decoder_inputs"])
        else:
            logits = model.apply({"params": params}, batch["decoder_inputs"])
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"]).mean()
    return loss


def random_batches(num, vocab, seed=0):
    rng = np.random.default_rng(seed)
    return [{k: jnp.asarray(rng.integers(1, vocab, (4, LENGTH)), jnp.int32)
             for k in ("inputs", "decoder_inputs", "targets")} for _ in range(num)]


@functools.lru_cache(maxsize=None)
def grad_fn(model):  # compiled once per model, shared by the optimizers' tests
    return jax.jit(jax.grad(loss_fn(model)))


def train(model, params, tx, batches):
    update = jax.jit(tx.update)
    state = tx.init(params)
    for batch in batches:
        updates, state = update(grad_fn(model)(params, batch), state, params)
        params = optax.apply_updates(params, updates)
    return params


def scanned_and_unrolled_after_training(config, tx, steps=3):
    """Trains the scanned model and its unrolled twin (same initial weights) on the same
    batches; returns both final parameter sets in the unrolled layout."""
    scanned_model = make_model(with_scan(config, True))
    params = init_params(scanned_model)
    unrolled_model = stacking.unscanned(scanned_model)
    unrolled_init = stacking.unrolled_params(scanned_model, params)
    assert (jax.tree.structure(unrolled_init)
            == jax.tree.structure(abstract_params(unrolled_model)))
    batches = random_batches(steps, config.vocab_size)
    scanned = train(scanned_model, params, tx, batches)
    unrolled = train(unrolled_model, unrolled_init, tx, batches)
    return (flat(stacking.unrolled_params(scanned_model, scanned)), flat(unrolled),
            flat(unrolled_init))


def assert_same_training(got, expected, initial, atol):
    assert got.keys() == expected.keys()
    for path in expected:
        assert not np.allclose(expected[path], initial[path], atol=1e-6), path  # it moved
        np.testing.assert_allclose(got[path], expected[path], atol=atol, rtol=0,
                                   err_msg="/".join(path))


@pytest.mark.parametrize("config", [LLAMA, T5], ids=["llama", "t5"])
def test_adamw_trains_scanned_and_unrolled_models_identically(config):
    # Not GPT: its key bias has a gradient of rounding noise only (softmax ignores a shift),
    # which Adam normalises into full steps. Its masks are checked above.
    # Adam's first steps are ≈ lr·sign(g), so rounding differences between the scanned and
    # unrolled forward passes reach ~3e-6 here; decaying the stacked norm scales (the old
    # rank-based mask) moves parameters by ~2e-2.
    tx = optimizers.adamw(1e-2, weight_decay=0.1)
    assert_same_training(*scanned_and_unrolled_after_training(config, tx), atol=1e-5)


@pytest.mark.parametrize("config", [LLAMA, T5], ids=["llama", "t5"])
def test_adafactor_trains_scanned_and_unrolled_models_identically(config):
    # Small matrices factored (min_dim 8) so factoring, clipping and the parameter scale all
    # act; weight decay on, so its mask is exercised too.
    # Whole-leaf statistics (optax.adafactor on the stacked leaves) differ by ~1.5e-3.
    schedule = optimizers.warmup_cosine(2e-2, warmup_steps=2, decay_steps=8)
    tx = optimizers.adafactor(schedule, min_dim_size_to_factor=8, weight_decay_rate=1e-3)
    assert_same_training(*scanned_and_unrolled_after_training(config, tx), atol=1e-6)


# ---------------------------------------------------------------------- in the Trainer
def test_per_layer_adafactor_state_shards_and_trains_in_the_trainer():
    """partitioning.optimizer_state_shardings still finds the per-parameter statistics:
    a scanned norm scale's full second moment is sharded like the scale."""
    config = decoder.DecoderConfig(vocab_size=256, embed_dim=32, num_layers=2, num_heads=4,
                                   head_dim=8, mlp_dim=64)
    schedule = optimizers.constant(1e-2)
    batch_size, length = 8, 16
    names = ("decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights")
    trainer = Trainer(
        decoder.DecoderLM(config), optimizers.adafactor(schedule, min_dim_size_to_factor=16),
        schedule, partitioning.make_mesh((2, 2, 2)), partitioning.DEFAULT_RULES,
        batch_shapes={k: ((batch_size, length), np.float32 if k.endswith("weights")
                          else np.int32) for k in names})
    state = trainer.create_state(0)
    factored = state.opt_state[0][0]  # chain -> per_layer(adafactor chain) -> FactoredState
    scale = state.params["layers"]["pre_mlp_norm"]["scale"]  # [layers, embed]
    assert factored.v["layers"]["pre_mlp_norm"]["scale"].sharding == scale.sharding
    wo = [factored.v_row, factored.v_col]
    assert [x["layers"]["mlp"]["wo"]["kernel"].shape for x in wo] == [(2, 32), (2, 64)]
    assert int(factored.count) == 0  # one shared step count (the state is donated below)
    rng = np.random.default_rng(0)
    tokens = rng.integers(2, 256, (batch_size, length)).astype(np.int32)
    batch = jax.device_put({"decoder_input_tokens": tokens, "decoder_target_tokens": tokens,
                            "decoder_loss_weights": np.ones(tokens.shape, np.float32)},
                           trainer.batch_sharding)
    losses = []
    for _ in range(5):
        state, metrics = trainer.train_step(state, batch)
        losses.append(float(metrics["loss"]))
    assert losses[-1] < losses[0]
    assert int(state.opt_state[0][0].count) == 5
