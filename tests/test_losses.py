"""`cross_entropy_with_logits` against numpy: plain cross entropy, z-loss, and label smoothing
as the KL divergence from the smoothed target distribution to the model's softmax."""
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

from t5x_lite.losses import cross_entropy_with_logits


def log_softmax(logits):
    logits = np.asarray(logits, np.float64)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def logsumexp(logits):
    logits = np.asarray(logits, np.float64)
    top = logits.max(axis=-1)
    return top + np.log(np.exp(logits - top[..., None]).sum(axis=-1))


def smoothed_targets(targets, vocab_size, smoothing):
    """1 - smoothing on the target, the rest spread evenly over the other V - 1 tokens."""
    q = np.full(targets.shape + (vocab_size,), smoothing / (vocab_size - 1))
    np.put_along_axis(q, targets[..., None], 1.0 - smoothing, axis=-1)
    return q


def kl_divergence(q, logits):
    """KL(q || softmax(logits)), with 0 · log 0 = 0."""
    log_q = np.log(np.where(q > 0, q, 1.0))
    return np.sum(q * (log_q - log_softmax(logits)), axis=-1)


def random_batch(seed, batch=3, length=5, vocab=11, scale=3.0):
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=scale, size=(batch, length, vocab)).astype(np.float32)
    targets = rng.integers(0, vocab, size=(batch, length)).astype(np.int32)
    return logits, targets


def test_without_smoothing_is_negative_log_softmax_at_target():
    logits, targets = random_batch(0)
    loss, z_term = cross_entropy_with_logits(jnp.asarray(logits), jnp.asarray(targets))
    expected = -np.take_along_axis(log_softmax(logits), targets[..., None], axis=-1)[..., 0]
    assert loss.shape == targets.shape and loss.dtype == jnp.float32
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    np.testing.assert_array_equal(z_term, np.zeros(targets.shape))


def test_z_loss_adds_z_times_log_normalizer_squared():
    logits, targets = random_batch(1, scale=5.0)
    plain, _ = cross_entropy_with_logits(jnp.asarray(logits), jnp.asarray(targets))
    loss, z_term = cross_entropy_with_logits(jnp.asarray(logits), jnp.asarray(targets),
                                             z_loss=1e-2)
    np.testing.assert_allclose(z_term, 1e-2 * logsumexp(logits) ** 2, rtol=1e-5)
    np.testing.assert_allclose(loss, plain + z_term, rtol=1e-6)


def test_z_loss_is_zero_for_normalised_logits():
    logits, targets = random_batch(2)
    log_probs = jnp.asarray(log_softmax(logits), jnp.float32)  # logsumexp = 0
    _, z_term = cross_entropy_with_logits(log_probs, jnp.asarray(targets), z_loss=1.0)
    np.testing.assert_allclose(z_term, 0.0, atol=1e-10)


@pytest.mark.parametrize("smoothing", [0.1, 0.3])
def test_label_smoothing_is_kl_from_smoothed_targets(smoothing):
    logits, targets = random_batch(3)
    loss, _ = cross_entropy_with_logits(jnp.asarray(logits), jnp.asarray(targets),
                                        label_smoothing=smoothing)
    q = smoothed_targets(targets, logits.shape[-1], smoothing)
    np.testing.assert_allclose(loss, kl_divergence(q, logits), rtol=1e-4, atol=1e-5)


def test_label_smoothing_loss_is_zero_at_the_smoothed_distribution():
    smoothing, vocab = 0.2, 7
    targets = np.array([[0, 3, 6]], np.int32)
    logits = np.log(smoothed_targets(targets, vocab, smoothing)) + 4.0  # any shift
    loss, _ = cross_entropy_with_logits(jnp.asarray(logits, jnp.float32), jnp.asarray(targets),
                                        label_smoothing=smoothing)
    np.testing.assert_allclose(loss, 0.0, atol=1e-5)
    # ... while the one-hot prediction that plain cross entropy likes is now penalised.
    confident = np.where(np.arange(vocab) == targets[..., None], 10.0, -10.0)
    loss, _ = cross_entropy_with_logits(jnp.asarray(confident, jnp.float32),
                                        jnp.asarray(targets), label_smoothing=smoothing)
    assert np.all(np.asarray(loss) > 1.0)


def test_bfloat16_logits_are_computed_in_float32():
    logits, targets = random_batch(4)
    loss, z_term = cross_entropy_with_logits(jnp.asarray(logits, jnp.bfloat16),
                                             jnp.asarray(targets), z_loss=1e-4)
    assert loss.dtype == jnp.float32 and z_term.dtype == jnp.float32


@st.composite
def loss_inputs(draw):
    # A few shapes only: each new shape compiles every jax op again.
    batch, length = draw(st.sampled_from([(1, 1), (2, 5)]))
    vocab = draw(st.sampled_from([2, 3, 33]))
    logits = draw(hnp.arrays(np.float32, (batch, length, vocab),
                             elements=st.floats(-20, 20, width=32)))
    targets = draw(hnp.arrays(np.int32, (batch, length), elements=st.integers(0, vocab - 1)))
    smoothing = draw(st.sampled_from([0.0]) | st.floats(0.0, 0.9))
    z_loss = draw(st.sampled_from([0.0, 1e-4, 0.1]))
    return logits, targets, smoothing, z_loss


@settings(max_examples=60, deadline=None)
@given(loss_inputs())
def test_loss_is_kl_plus_z_loss_for_random_inputs(inputs):
    logits, targets, smoothing, z_loss = inputs
    loss, z_term = cross_entropy_with_logits(jnp.asarray(logits), jnp.asarray(targets),
                                             label_smoothing=smoothing, z_loss=z_loss)
    q = smoothed_targets(targets, logits.shape[-1], smoothing)
    expected_z = z_loss * logsumexp(logits) ** 2
    np.testing.assert_allclose(z_term, expected_z, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(loss, kl_divergence(q, logits) + expected_z,
                               rtol=1e-4, atol=2e-4)
    assert np.all(np.asarray(loss - z_term) >= -1e-4)  # a KL divergence is never negative
