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


def _chunking_cases():
    from t5x_lite.models import decoder, encoder, encoder_decoder, model_format

    fmt = model_format.ModelFormat(pad_id=0, eos_id=1)
    small = dict(vocab_size=97, embed_dim=16, num_heads=2, head_dim=8, mlp_dim=32)
    yield "decoder_untied", decoder.DecoderLM(decoder.DecoderConfig(
        **small, num_layers=1, tie_embeddings=False))
    yield "t5", encoder_decoder.EncoderDecoder(encoder_decoder.EncoderDecoderConfig(
        **small, num_encoder_layers=1, num_decoder_layers=1, tie_embeddings=True))
    yield "bert", encoder.EncoderLM(encoder.EncoderConfig(**small, num_layers=1, max_length=16,
                                                          format=fmt))


@pytest.mark.parametrize("name", ["decoder_untied", "t5", "bert"])
def test_chunked_loss_equals_the_whole_loss_and_its_gradients(name):
    """Logits a chunk at a time (length 13 in chunks of 5: the last one padded) give the
    plain path's sums and parameter gradients, label smoothing and z-loss included."""
    import jax

    from t5x_lite.trainer import TokenCrossEntropy

    module = dict(_chunking_cases())[name]
    rng = np.random.default_rng(0)
    tokens = rng.integers(2, 97, size=(3, 13)).astype(np.int32)
    segments = np.ones_like(tokens)
    segments[1, 9:] = 0
    prefix = "encoder" if name == "bert" else "decoder"
    batch = {f"{prefix}_input_tokens": tokens, f"{prefix}_segment_ids": segments,
             f"{prefix}_target_tokens": np.roll(tokens, -1, axis=1),
             f"{prefix}_loss_weights": segments.astype(np.float32)}
    if name == "t5":
        batch.update(encoder_input_tokens=tokens[:, ::-1].copy(), encoder_segment_ids=segments)
    plain = TokenCrossEntropy(label_smoothing=0.1, z_loss=1e-3)
    chunked = TokenCrossEntropy(label_smoothing=0.1, z_loss=1e-3, chunk_size=5)
    params = module.init(jax.random.key(1), **plain.init_inputs(module, batch))["params"]

    def run(loss):
        return jax.grad(lambda p: loss.sums(module, p, batch, None), has_aux=True)(params)

    (grads, sums), (chunk_grads, chunk_sums) = run(plain), run(chunked)
    for key in sums:
        np.testing.assert_allclose(chunk_sums[key], sums[key], rtol=1e-5, err_msg=key)
    flat, chunk_flat = jax.tree.leaves(grads), jax.tree.leaves(chunk_grads)
    for g, c in zip(flat, chunk_flat):
        np.testing.assert_allclose(c, g, rtol=1e-4, atol=1e-6)
    assert any(float(np.abs(g).max()) > 0 for g in flat)


def test_a_chunk_longer_than_the_targets_projects_only_the_real_positions():
    """T5's 114 targets with the default 256-position chunk: no padded positions go through
    the output layer (they would more than double its work)."""
    import jax.numpy as jnp

    from t5x_lite import losses

    rng = np.random.default_rng(0)
    states = jnp.asarray(rng.normal(size=(2, 13, 4)), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(4, 11)), jnp.float32)
    targets = jnp.asarray(rng.integers(0, 11, size=(2, 13)), jnp.int32)
    projected_lengths = []

    def project(x):
        projected_lengths.append(x.shape[1])
        return x @ kernel

    got = losses.chunked_token_losses(project, states, targets, chunk_size=256)
    want = losses.token_losses(states @ kernel, targets)
    assert projected_lengths == [13]
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-6)
