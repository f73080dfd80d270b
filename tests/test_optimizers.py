"""Learning-rate schedules against their formulas; AdamW and Adafactor against hand-written
numpy versions of the update rules."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from t5x_lite import optimizers

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
    state = tx.init(params)
    for grads in grads_per_step:
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)
    return params, state


def test_adamw_decays_matrices_but_not_vectors():
    lr, weight_decay = 0.1, 0.5
    params = {"scale": jnp.ones(4), "bias": jnp.full(4, 2.0), "kernel": jnp.ones((3, 4))}
    zero_grads = jax.tree.map(jnp.zeros_like, params)
    tx = optimizers.adamw(lr, weight_decay=weight_decay)
    new, _ = run_steps(tx, params, [zero_grads])
    np.testing.assert_array_equal(new["scale"], params["scale"])  # 1-D: no decay
    np.testing.assert_array_equal(new["bias"], params["bias"])
    np.testing.assert_allclose(new["kernel"], params["kernel"] * (1 - lr * weight_decay),
                               rtol=1e-6)


def reference_adamw(params, grads_per_step, *, lr, b1, b2, eps, weight_decay, clip_norm):
    """AdamW (Loshchilov & Hutter) with global-norm clipping, decay only on ndim >= 2."""
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
            decay = weight_decay * params[k] if params[k].ndim >= 2 else 0.0
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
    direction = {"a": jnp.array([3.0, 4.0]), "b": jnp.ones((2, 2))}
    norm = float(optax.tree.norm(direction))
    grads = jax.tree.map(lambda g: g * grad_norm / norm, direction)
    params = jax.tree.map(jnp.zeros_like, direction)
    updates, _ = tx.update(grads, tx.init(params), params)
    assert float(optax.tree.norm(updates)) * eps == pytest.approx(
        min(grad_norm, clip_norm), rel=1e-4)


def test_adamw_without_clipping_passes_large_gradients():
    eps = 1e6
    tx = optimizers.adamw(1.0, b1=0.0, b2=0.0, eps=eps, weight_decay=0.0, clip_norm=None)
    grads = {"a": jnp.array([30.0, 40.0])}
    updates, _ = tx.update(grads, tx.init(grads), grads)
    assert float(optax.tree.norm(updates)) * eps == pytest.approx(50.0, rel=1e-4)


# ------------------------------------------------------------------------------- Adafactor
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


def reference_adafactor_step(param, grad, v, count, *, lr, decay_rate=0.8, threshold=1.0,
                             factored=False):
    """One Adafactor step (Shazeer & Stern 2018, as optax implements it) in numpy float64.
    `v` is the full second moment, or (row, column) means when factored."""
    decay = 1.0 - (count + 1.0) ** -decay_rate
    grad_sq = grad**2 + 1e-30
    if factored:
        v_row = decay * v[0] + (1 - decay) * grad_sq.mean(axis=1)
        v_col = decay * v[1] + (1 - decay) * grad_sq.mean(axis=0)
        v = (v_row, v_col)
        update = grad / np.sqrt(v_row / v_row.mean())[:, None] / np.sqrt(v_col)[None, :]
    else:
        v = decay * v + (1 - decay) * grad_sq
        update = grad / np.sqrt(v)
    update = update / max(1.0, np.sqrt(np.mean(update**2)) / threshold)  # update clipping
    update = update * lr * max(np.sqrt(np.mean(param**2)), 1e-3)  # relative step size
    return param - update, v


@pytest.mark.parametrize("factored", [False, True])
def test_adafactor_matches_hand_computed_steps(factored):
    rng = np.random.default_rng(1)
    param = rng.normal(size=(2, 3))
    grads = [rng.normal(size=(2, 3)) * scale for scale in (1.0, 0.1, 5.0)]
    # min_dim_size_to_factor=2 factors even this tiny matrix.
    tx = optimizers.adafactor(0.05, min_dim_size_to_factor=2 if factored else 128)
    got, state = run_steps(tx, {"w": jnp.float32(param)},
                           [{"w": jnp.float32(g)} for g in grads])

    expected = param
    v = (np.zeros(2), np.zeros(3)) if factored else np.zeros((2, 3))
    for count, grad in enumerate(grads):
        expected, v = reference_adafactor_step(expected, grad, v, count, lr=0.05,
                                               factored=factored)
    np.testing.assert_allclose(got["w"], expected, rtol=1e-5, atol=1e-6)
    if factored:
        np.testing.assert_allclose(optax.tree_utils.tree_get(state, "v_row")["w"], v[0],
                                   rtol=1e-5)


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
    expected_clipped = np.ones((2, 3))
    v = np.zeros((2, 3))
    for count, grad in enumerate(grads):
        g = np.asarray(grad["w"], np.float64)
        g = g * min(1.0, 1.0 / np.sqrt(np.sum(g**2)))
        expected_clipped, v = reference_adafactor_step(expected_clipped, g, v, count, lr=0.1)
    np.testing.assert_allclose(clipped["w"], expected_clipped, rtol=1e-5)
    assert not np.allclose(clipped["w"], unclipped["w"])
