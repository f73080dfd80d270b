"""Best-of-n sampling and rejection-sampling fine-tuning (`t5x-lite best_of_n`).

Best-of-n: sample n responses per prompt from the policy, score each with the reward model,
keep the best (Nakano et al. 2021; LLaMA 2 §3.2.3 samples K per prompt at temperature
1.2-1.3 for K in 10-100). Sampling and scoring run in one jit on the mesh, the sampler being
`decoding.sample` and the scores the reward model's at the EOS (rollouts.reward_scores).

Rejection sampling (LLaMA 2): the kept responses become an SFT dataset — the JSONL written
here, {"inputs": prompt, "targets": best response, "score": ...} — that
`runs/rejection_sampling.gin` fine-tunes on through the instruction-tuning path
(`jsonl_mixture` registers it as a task with the identity template).
"""
from __future__ import annotations

import json
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from t5x_lite import decoding, inference, partitioning, paths, train_loop
from t5x_lite.data.tasks import mixtures, task as task_lib, templates
from t5x_lite.models import heads
from t5x_lite.rlhf import jobs, preference_arrays, preferences, rollouts


def best_of(language_model, reward: heads.ScalarHead, policy_params, reward_params, prompt,
            prompt_lengths, key, *, n: int, temperature: float, max_new_tokens: int):
    """Jittable: n samples per prompt row, scored; returns (best response [B, T], its length
    [B], all scores [B, n], all responses [B, n, T], all lengths [B, n])."""
    batch = prompt.shape[0]
    tile = lambda x: jnp.repeat(x, n, axis=0)
    seeds = jax.random.bits(key, (batch * n,), jnp.uint32)
    responses, lengths = decoding.sample(
        language_model, policy_params, tile(prompt), tile(prompt_lengths), seeds,
        strategy=decoding.Strategy(temperature=temperature), max_new_tokens=max_new_tokens)
    scores = rollouts.reward_scores(reward, reward_params, tile(prompt), tile(prompt_lengths),
                                    responses, lengths).reshape(batch, n)
    responses = responses.reshape(batch, n, -1)
    lengths = lengths.reshape(batch, n)
    best = jnp.argmax(scores, axis=1)
    pick = lambda x: jnp.take_along_axis(x, best.reshape((batch, 1) + (1,) * (x.ndim - 2)),
                                         axis=1)[:, 0]
    return pick(responses), pick(lengths), scores, responses, lengths


def best_of_n(*, model, vocabulary, model_dir: str, reward_model_dir: str, input_path: str,
              output_path: str, reward_model=None, n: int = 4, temperature: float = 1.0,
              max_new_tokens: int = 32, prompt_length: int = 64, batch_size: int = 8,
              prompt_key: str = "prompt", instruction_prompts: bool = True, seed: int = 0,
              mesh_shape=(-1, 1, 1),
              logical_axis_rules=partitioning.DEFAULT_RULES) -> list[dict[str, Any]]:
    """Writes one JSONL record per prompt of `input_path`: {"prompt", "inputs", "targets"
    (the best response), "score", "scores" (all n)}; returns the records."""
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    prompts, stats = preferences.read_prompts(input_path, prompt_key)
    train_loop.say(stats.summary())
    mesh = partitioning.make_mesh(mesh_shape)
    rules = tuple(tuple(r) for r in logical_axis_rules)
    jobs.check_batch(batch_size, mesh, rules)
    reward = heads.ScalarHead(reward_model or model)
    policy_params = jobs.language_model_params(model_dir, model, mesh, rules)
    reward_params = jobs.head_params(reward_model_dir, reward, mesh, rules)
    sample = jobs.jit_on_mesh(
        lambda p, r, prompt, lengths, key: best_of(
            model, reward, p, r, prompt, lengths, key, n=n, temperature=temperature,
            max_new_tokens=max_new_tokens),
        mesh, rules, out_shardings=partitioning.replicated(mesh))
    arrays = preference_arrays.encode_prompts(prompts, vocabulary, prompt_length=prompt_length,
                                        prompt_eos=jobs.prompt_eos(model, instruction_prompts))
    sharding = partitioning.batch_sharding(mesh, rules)
    records = []
    for start in range(0, len(prompts), batch_size):
        rows = np.arange(start, start + batch_size) % len(prompts)  # the last batch cycles
        batch = {k: partitioning.put_global(v[rows], sharding) for k, v in arrays.items()}
        key = jax.random.fold_in(jax.random.key(seed), start)
        best, lengths, scores, _, _ = jax.device_get(sample(policy_params, reward_params,
                                                            batch["prompt"],
                                                            batch["prompt_lengths"], key))
        for i, index in enumerate(rows[:min(batch_size, len(prompts) - start)]):
            response = vocabulary.decode(best[i, :lengths[i]].tolist())
            records.append({"prompt": prompts[index], "inputs": prompts[index],
                            "targets": response, "score": float(scores[i].max()),
                            "scores": [float(s) for s in scores[i]]})
    if train_loop.is_writer():
        inference.write_jsonl_atomically(output_path, records)
    return records


# ------------------------------------------------------------------ rejection sampling
class JsonlSource:
    """{"inputs", "targets"} records of a JSONL file as a task source: 'train' is all but the
    last `dev_size` records, 'dev' those, 'test' the same as dev."""

    def __init__(self, path: str, dev_size: int = 0):
        self.path, self.dev_size = path, dev_size
        self._records = None

    def describe(self) -> str:
        return f"jsonl:{self.path}"

    def records(self, split: str, data_dir: str | None = None):
        if self._records is None:
            self._records = inference.read_jsonl(self.path, ["inputs", "targets"])
        cut = len(self._records) - min(self.dev_size, len(self._records) // 2)
        return self._records[:cut] if split == "train" else self._records[cut:]


def jsonl_mixture(path: str, name: str = "rejection_sampled", dev_size: int = 16) -> str:
    """Registers a task reading `path`'s {"inputs", "targets"} as they are, and a mixture of
    just it; returns the mixture's name (what instruction tuning's MIXTURE names), so that
    rejection-sampling fine-tuning is instruction tuning on the best-of-n file."""
    identity = templates.Template("{inputs}", "{targets}")
    task = task_lib.Task(name=name, source=JsonlSource(str(paths.as_path(path)), dev_size),
                         preprocessor=dict, clusters=("rejection_sampling",), metric="rouge",
                         templates=(identity,))
    task_lib.register(task, replace=True)  # the same name always reads the newest file
    mixtures.register(mixtures.Mixture(name=name, members=(name,)))
    return name


def summary(records) -> str:
    scores = [r["score"] for r in records]
    return json.dumps({"prompts": len(records), "best_score_mean": float(np.mean(scores)),
                       "all_scores_mean": float(np.mean([np.mean(r["scores"])
                                                         for r in records]))})
