"""The preference-learning jobs in-process on tiny models: PPO resumes bit-identically and
never changes the reference, a NaN stops it with the last good checkpoint, the reward model
trains on either trunk and gives the same numbers on any mesh, DPO's live reference stays
frozen."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import rlhf_fixtures as fx
from t5x_lite import train_loop
from t5x_lite.rlhf import dpo, jobs, ppo, ppo_math, preferences, reward_model, rollouts

ADAM = lambda learning_rate: optax.adam(learning_rate)


def train_rm(root, model, mesh_shape=(8, 1, 1), steps=4, name="rm"):
    comparisons = fx.write_comparisons(root / "comparisons.jsonl")
    sft, _ = fx.save_lm(model, root / f"sft_{model.architecture}" / "params")
    metrics = reward_model.train_reward(
        model_dir=str(root / name), model=model, vocabulary=fx.CharVocabulary(),
        preference_data=preferences.PreferenceData(path=comparisons, eval_fraction=0.3, seed=1),
        optimizer=ADAM, learning_rate=optax.constant_schedule(3e-3), train_steps=steps,
        batch_size=8, prompt_length=24, response_length=12, max_responses=3, init_from=sft,
        mesh_shape=mesh_shape, log_every=1, eval_every=steps, progress_bar=False)
    return sft, metrics


@pytest.fixture(scope="module")
def decoder_rm(tmp_path_factory):
    root = tmp_path_factory.mktemp("rlhf_jobs")
    model = fx.tiny_decoder()
    sft, metrics = train_rm(root, model)
    return root, model, sft, metrics


def test_reward_model_learns_the_labeler_s_ranking(decoder_rm):
    root, _, _, metrics = decoder_rm
    records = [json.loads(line) for line in (root / "rm/metrics.jsonl").read_text().splitlines()]
    losses = [r["train/loss"] for r in records if "train/loss" in r]
    assert losses[-1] < losses[0]
    assert 0 <= metrics["eval/pairwise_accuracy"] <= 1 and metrics["eval/comparisons"] > 0


def test_reward_model_is_the_same_on_any_mesh(decoder_rm, tmp_path):
    root, model, _, _ = decoder_rm
    _, other = train_rm(tmp_path, model, mesh_shape=(2, 2, 2))
    read = lambda d: [json.loads(line) for line in (d / "rm/metrics.jsonl").read_text()
                      .splitlines()]
    ours = [r["train/loss"] for r in read(root) if "train/loss" in r]
    theirs = [r["train/loss"] for r in read(tmp_path) if "train/loss" in r]
    np.testing.assert_allclose(ours, theirs, rtol=2e-4, atol=1e-5)


def test_reward_model_on_a_t5_trunk(tmp_path):
    _, metrics = train_rm(tmp_path, fx.tiny_t5(), steps=2)
    assert np.isfinite(metrics["train/loss"]) and "reward/normalization_offset" in metrics


def capture_frozen(monkeypatch):
    """Keeps every language model the jobs load (the SFT reference) to check it afterwards."""
    loaded = []
    original = jobs.language_model_params

    def capture(*args, **kwargs):
        params = original(*args, **kwargs)
        loaded.append(params)
        return params

    monkeypatch.setattr(jobs, "language_model_params", capture)
    return loaded


def run_ppo(root, model, sft, model_dir, steps, **overrides):
    settings = dict(
        model_dir=str(model_dir), model=model, vocabulary=fx.CharVocabulary(),
        prompt_data=preferences.PromptData(path=fx.write_prompts(root / "prompts.jsonl"),
                                           eval_fraction=0.3, seed=1),
        init_from=sft, reward_model_dir=str(root / "rm"), optimizer=ADAM,
        learning_rate=optax.constant_schedule(1e-3), train_steps=steps, batch_size=8,
        num_minibatches=2, ppo_epochs=2, prompt_length=24,
        rollout=rollouts.RolloutConfig(max_new_tokens=6),
        kl_control=ppo_math.KLControl(0.05, target=1.0, horizon=100), mesh_shape=(2, 2, 2),
        log_every=1, eval_every=steps, checkpoint_every=2, progress_bar=False)
    settings.update(overrides)
    return ppo.train_ppo(**settings)


def test_ppo_resumes_bit_identically_and_never_changes_the_reference(decoder_rm, tmp_path,
                                                                     monkeypatch):
    root, model, sft, _ = decoder_rm
    loaded = capture_frozen(monkeypatch)
    straight = run_ppo(root, model, sft, tmp_path / "straight", 4)
    run_ppo(root, model, sft, tmp_path / "resumed", 2)
    resumed = run_ppo(root, model, sft, tmp_path / "resumed", 4)
    timing = lambda m: {k: v for k, v in m.items() if "perf/" not in k}
    assert timing(straight) == timing(resumed)  # every logged figure, bit for bit
    from t5x_lite import checkpoints

    exported = [checkpoints.restore_params(str(tmp_path / d / "params"))
                for d in ("straight", "resumed")]
    jax.tree.map(np.testing.assert_array_equal, *exported)
    # The adaptive controller moved β, and the policy moved away from the reference...
    assert straight["train/beta"] != 0.05
    _, sft_params = fx.save_lm(model, tmp_path / "again" / "params")
    assert any(np.any(a != b) for a, b in zip(jax.tree.leaves(exported[0]),
                                              jax.tree.leaves(sft_params)))
    # ...while the reference every run held is still the SFT model, bit for bit.
    assert len(loaded) == 3
    for reference in loaded:
        jax.tree.map(np.testing.assert_array_equal, jax.device_get(reference), sft_params)


def test_ppo_with_a_value_head_on_the_policy_and_a_t5_policy(tmp_path):
    model = fx.tiny_t5()
    sft, _ = train_rm(tmp_path, model, steps=2)
    metrics = run_ppo(tmp_path, model, sft, tmp_path / "ppo", 2, value_model="policy_head")
    assert np.isfinite(metrics["train/loss"]) and "train/value_loss" in metrics


def test_a_nan_stops_ppo_with_the_last_good_checkpoint(decoder_rm, tmp_path):
    root, model, sft, _ = decoder_rm
    # 4 minibatch updates per iteration: the first two iterations (and their checkpoint) are
    # fine, the third's updates are infinite.
    schedule = lambda step: jnp.where(step < 8, 1e-3, jnp.inf)
    with pytest.raises(train_loop.NonFiniteLossError, match="last good checkpoint is step 2"):
        run_ppo(root, model, sft, tmp_path / "nan", 4, learning_rate=schedule)


def test_dpo_live_reference_stays_frozen_and_matches_precomputed(decoder_rm, tmp_path,
                                                                 monkeypatch):
    root, model, sft, _ = decoder_rm
    loaded = capture_frozen(monkeypatch)
    results = {}
    for precompute in (True, False):
        results[precompute] = dpo.train_dpo(
            model_dir=str(tmp_path / f"dpo_{precompute}"), model=model,
            vocabulary=fx.CharVocabulary(),
            preference_data=preferences.PreferenceData(path=str(root / "comparisons.jsonl"),
                                                       eval_fraction=0.3, seed=1),
            init_from=sft, optimizer=ADAM, learning_rate=optax.constant_schedule(1e-3),
            train_steps=3, batch_size=8, prompt_length=24, response_length=12,
            precompute_reference=precompute, mesh_shape=(2, 2, 2), log_every=1, eval_every=3,
            progress_bar=False)
    np.testing.assert_allclose(results[True]["train/loss"], results[False]["train/loss"],
                               rtol=1e-5)
    _, sft_params = fx.save_lm(model, tmp_path / "again" / "params")
    for reference in loaded:
        jax.tree.map(np.testing.assert_array_equal, jax.device_get(reference), sft_params)
