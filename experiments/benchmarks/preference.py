"""Preference-learning steps on CPU: t5x_lite DPO and PPO beside TRL / PyTorch, same tiny model.

What is measured
  * Model, both sides, random init, float32: gin_configs/models/decoder_tiny.gin written out
    (vocab 8,320, d=256, 4 layers, 4 query heads / 2 key-value heads x 64, SwiGLU 768, RMSNorm,
    RoPE, no bias, untied output layer). t5x_lite: `DecoderLM(DecoderConfig(...))` on a (1, 1, 1)
    mesh of the one real CPU device. Torch: `LlamaForCausalLM` with the same dimensions (SDPA
    attention), value and reward models `LlamaForSequenceClassification` (trunk + linear score).
  * Data: the same random token ids on both sides: `--batch_size` prompts of `--prompt_len` ids;
    responses of `--response_len` tokens (the last one EOS), no padding anywhere.
  * DPO training step (sigmoid loss, beta 0.1, reference log-probs precomputed, AdamW).
    t5x_lite: `Trainer(..., loss=rlhf.dpo.DPOLoss())`, `train_step` on a {prompt, responses,
    ref_logps, ...} batch (as `train_dpo` builds it; the reference log-probs come from
    `dpo.reference_logprobs`, as with `precompute_reference=True`). TRL: a real
    `trl.DPOTrainer` (`precompute_ref_log_probs=True`, bf16 and gradient checkpointing off,
    the same AdamW settings) built on a text dataset of the same ids through a word-level
    tokenizer made here; a step is what `Trainer`'s loop does per batch: `training_step` (forward
    with TRL's fused LM head, DPO loss, backward) -> `_clip_grad_norm` -> `optimizer.step()` ->
    `zero_grad()`, on the batch its own collator made (ref_chosen_logps / ref_rejected_logps
    included). tokens/s = 2 x batch x (prompt + response) / step time. TRL's patched forward
    (`fused_lm_head=True`) applies the output layer only at completion positions, and so does
    t5x_lite (`sequences.response_outputs`); the model-FLOPs count below (and so the MFU of
    both sides) includes the output layer at every position, the usual 6·N·tokens.
  * PPO iteration (rollout + update; separate value model initialised like the reward model,
    InstructGPT-style, temperature 1, k1 KL penalty, GAE, `--ppo_epochs` x `--num_minibatches`).
    t5x_lite: `rlhf.ppo.Iteration` built as `train_ppo` builds it (`value_model='reward_model'`),
    with random reward-model weights instead of a checkpoint; its own timers give
    `perf/rollout_seconds` and `perf/update_seconds`. TRL 1.16 has no PPO trainer (see the
    "PPO on the TRL side" line the script prints), so the torch side is the same work written
    in PyTorch the way TRL's last PPOTrainer did it: `generate(do_sample=True, temperature=1,
    top_k=0, top_p=1)` for the batch, then under no_grad the policy, reference, value and reward
    forwards (TRL took the policy's log-probs from generate's scores instead; both sides here
    run that forward, as t5x_lite does), per-token KL rewards, GAE (a reverse loop) and
    advantage whitening; then per epoch a shuffle and per minibatch one policy + value
    forward, clipped PPO and value losses (loss = pg + 0.1 * vf), backward, clipping to 1.0 and
    one AdamW step (fused, transformers' default) over both models; t5x_lite runs a policy and
    a value `Trainer.train_step` per minibatch (AdamW with clipping each).
    Rollout tokens/s = generated tokens (up to and including an EOS) / rollout seconds; update
    tokens/s = (prompt + response) x batch x epochs / update seconds.
  * Timing: warm-up first (compiles on the JAX side; reported), then `--rounds` rounds; each
    round times `--dpo_steps` DPO steps per side (their median) and one PPO iteration per
    side, the side that goes first alternating, and measures the CPU's float32 matmul peak
    (`metrics.measure_cpu_peak_flops`). Reported: medians over rounds, ratio t5x_lite / torch
    per round (median and range). MFU (DPO only): `metrics.model_flops_per_step` (6·N·tokens +
    attention, N the matmul parameters) over the median step time and the median peak; the
    same model FLOPs are used for the TRL step.

Run (on a quiet machine: with another job computing, the figures mean little):
    .venv/bin/python experiments/benchmarks/preference.py
    .venv/bin/python experiments/benchmarks/preference.py --rounds 5 --dpo_steps 3
"""
from __future__ import annotations

import argparse
import copy
import os
import statistics
import tempfile
import time
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

import jax
import jax.numpy as jnp
import numpy as np

from t5x_lite import metrics, optimizers, partitioning, trainer as trainer_lib
from t5x_lite.data import pipeline
from t5x_lite.models import heads
from t5x_lite.models.decoder import DecoderConfig, DecoderLM
from t5x_lite.rlhf import dpo, jobs, ppo, ppo_math, rollouts

# gin_configs/models/decoder_tiny.gin
VOCAB, EMBED, LAYERS, HEADS, KV_HEADS, HEAD_DIM, MLP = 8320, 256, 4, 4, 2, 64, 768
PAD, EOS = 0, 1  # ModelFormat defaults; ids >= 3 are ordinary tokens
DPO_LR, PPO_LR = 1e-6, 3e-6  # TRL's DPO default; the PPOTrainer's default
BETA = 0.1  # DPO
KL_BETA, CLIP, CLIP_VALUE, VALUE_COEF, GAMMA, LAM = 0.02, 0.2, 0.2, 0.1, 1.0, 0.95  # PPO


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds after a warm-up")
    parser.add_argument("--dpo_steps", type=int, default=3, help="DPO steps per side per round")
    parser.add_argument("--batch_size", type=int, default=8, help="DPO pairs / PPO prompts")
    parser.add_argument("--prompt_len", type=int, default=64)
    parser.add_argument("--response_len", type=int, default=64)
    parser.add_argument("--ppo_epochs", type=int, default=4)
    parser.add_argument("--num_minibatches", type=int, default=1)
    parser.add_argument("--skip_dpo", action="store_true")
    parser.add_argument("--skip_ppo", action="store_true")
    return parser.parse_args()


def make_data(args, seed: int = 0) -> dict[str, np.ndarray]:
    """Prompts [B, Lp] and response pairs [B, 2, Lr] (EOS last), ids in [3, VOCAB)."""
    rng = np.random.default_rng(seed)
    b, lp, lr = args.batch_size, args.prompt_len, args.response_len
    responses = rng.integers(3, VOCAB, (b, 2, lr), dtype=np.int32)
    responses[:, :, -1] = EOS
    return {"prompt": rng.integers(3, VOCAB, (b, lp), dtype=np.int32), "responses": responses}


def seconds(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


# ------------------------------------------------------------------------------- t5x_lite
def t5x_model() -> DecoderLM:
    return DecoderLM(DecoderConfig(
        vocab_size=VOCAB, embed_dim=EMBED, num_layers=LAYERS, num_heads=HEADS,
        num_kv_heads=KV_HEADS, head_dim=HEAD_DIM, mlp_dim=MLP, mlp_activations=("silu", "linear"),
        norm_type="rmsnorm", position_embedding="rope", tie_embeddings=False, dropout_rate=0.0,
        dtype="float32", param_dtype="float32", scan_layers=True, remat_policy="none"))


def t5x_mesh():
    return partitioning.make_mesh((1, 1, 1), devices=jax.devices()[:1])


class T5xDPO:
    """`train_dpo`'s trainer and batch, one step at a time."""

    def __init__(self, args, data):
        b = args.batch_size
        self.model = t5x_model()
        arrays = {
            "prompt": data["prompt"],
            "prompt_lengths": np.full((b,), args.prompt_len, np.int32),
            "responses": data["responses"],
            "response_lengths": np.full((b, 2), args.response_len, np.int32),
            "num_responses": np.full((b,), 2, np.int32),
        }
        shapes = jobs.batch_shapes(arrays, b)
        shapes["ref_logps"] = ((b, 2), np.float32)
        schedule = optimizers.constant(DPO_LR)
        self.trainer = trainer_lib.Trainer(
            self.model, optimizers.adamw(schedule), schedule, t5x_mesh(),
            partitioning.DEFAULT_RULES, batch_shapes=shapes, loss=dpo.DPOLoss(BETA))
        self.state = self.trainer.create_state(seed=0)
        # precompute_reference=True: the initial policy is the reference
        arrays["ref_logps"] = dpo.reference_logprobs(self.trainer, self.state.params, arrays)
        self.batch = pipeline.global_batch(arrays, self.trainer.batch_sharding, b)
        self.row_length = 1 + args.prompt_len + args.response_len  # [start] + prompt + response
        self.flops = metrics.model_flops_per_step(
            self.model, self.state.params, {"targets": self.row_length}, 2 * b)
        self.params = metrics.count_params(self.state.params)
        self.head_params = metrics.count_params(self.state.params["lm_head"])

    def step(self):
        self.state, out = self.trainer.train_step(self.state, self.batch)  # state donated
        jax.block_until_ready((self.state, out))
        self.loss = float(out["loss"])


class T5xPPO:
    """`train_ppo`'s Iteration (value_model='reward_model'), random reward-model weights."""

    def __init__(self, args, data):
        b, mb = args.batch_size, args.batch_size // args.num_minibatches
        model = t5x_model()
        mesh, rules = t5x_mesh(), partitioning.DEFAULT_RULES
        reward = heads.ScalarHead(model)
        networks = rollouts.Networks(policy=model, reward=reward, value=reward)
        settings = ppo.LossSettings(clip_range=CLIP, clip_range_value=CLIP_VALUE,
                                    value_coef=VALUE_COEF, temperature=1.0)
        shapes = ppo._experience_shapes(mb, args.prompt_len, args.response_len)
        schedule = optimizers.constant(PPO_LR)
        policy_trainer = trainer_lib.Trainer(model, optimizers.adamw(schedule), schedule, mesh,
                                             rules, batch_shapes=shapes,
                                             loss=ppo.PolicyLoss(networks, settings))
        value_trainer = trainer_lib.Trainer(reward, optimizers.adamw(schedule), schedule, mesh,
                                            rules, batch_shapes=shapes,
                                            loss=ppo.ValueLoss(settings))
        policy = policy_trainer.create_state(0)
        reward_params = value_trainer.create_state(1).params  # stands in for a trained RM
        frozen = {"reference": jax.tree.map(jnp.copy, policy.params), "reward": reward_params}
        value = value_trainer.create_state(0).replace(
            params=jax.tree.map(jnp.copy, reward_params))  # InstructGPT: value starts as RM
        config = rollouts.RolloutConfig(max_new_tokens=args.response_len, temperature=1.0,
                                        gamma=GAMMA, lam=LAM)
        self.iteration = ppo.Iteration(
            networks, config, ppo_math.KLControl(KL_BETA), policy_trainer, value_trainer,
            frozen, batch_size=b, num_minibatches=args.num_minibatches,
            ppo_epochs=args.ppo_epochs)
        self.state = ppo.PPOState(policy=policy, value=value, beta=jnp.float32(KL_BETA),
                                  rng=jax.random.key_data(jax.random.key(1)))
        self.prompts = pipeline.global_batch(
            {"prompt": data["prompt"],
             "prompt_lengths": np.full((b,), args.prompt_len, np.int32)},
            policy_trainer.batch_sharding, b)

    def iterate(self) -> dict[str, float]:
        self.state, out = self.iteration(self.state, self.prompts)
        out = {k: float(v) for k, v in jax.device_get(out).items()}
        return {"rollout_s": out["perf/rollout_seconds"], "update_s": out["perf/update_seconds"],
                "generated": out["rollout/generated_tokens"], "logged": out}


# ------------------------------------------------------------------------------- torch
def llama_config():
    import transformers

    return transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=EMBED, intermediate_size=MLP, num_hidden_layers=LAYERS,
        num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, head_dim=HEAD_DIM,
        hidden_act="silu", rms_norm_eps=1e-6, max_position_embeddings=512,
        tie_word_embeddings=False, attention_bias=False, mlp_bias=False, pad_token_id=PAD,
        eos_token_id=EOS, bos_token_id=None, num_labels=1, attn_implementation="sdpa")


def word_tokenizer():
    """A word-level tokenizer built here: "t<id>" <-> id, <pad> 0, </s> 1 (EOS), <unk> 2."""
    import tokenizers
    import transformers
    from tokenizers import models, pre_tokenizers

    vocab = {"<pad>": PAD, "</s>": EOS, "<unk>": 2, **{f"t{i}": i for i in range(3, VOCAB)}}
    backend = tokenizers.Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.add_special_tokens(["<pad>", "</s>", "<unk>"])
    return transformers.PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>",
                                                eos_token="</s>", unk_token="<unk>")


class TrlDPO:
    """A real `trl.DPOTrainer`; one step = what its training loop does per batch."""

    def __init__(self, args, data, workdir):
        import datasets
        import torch
        import transformers
        import trl

        torch.manual_seed(0)
        words = lambda ids: " ".join(f"t{i}" for i in ids)
        responses = data["responses"][:, :, :-1]  # TRL appends the EOS itself
        dataset = datasets.Dataset.from_dict({
            "prompt": [words(p) for p in data["prompt"]],
            "chosen": [" " + words(r[0]) for r in responses],
            "rejected": [" " + words(r[1]) for r in responses]})
        warnings.filterwarnings("ignore", category=FutureWarning)  # gradient_checkpointing
        config = trl.DPOConfig(
            output_dir=workdir, report_to="none", use_cpu=True, bf16=False,
            gradient_checkpointing=False, per_device_train_batch_size=args.batch_size,
            precompute_ref_log_probs=True, beta=BETA, loss_type=["sigmoid"],
            learning_rate=DPO_LR, adam_beta1=0.9, adam_beta2=0.95, adam_epsilon=1e-8,
            weight_decay=0.1, max_grad_norm=1.0, lr_scheduler_type="constant",
            save_strategy="no", disable_tqdm=True, seed=0)
        model = transformers.LlamaForCausalLM(llama_config())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.trainer = trl.DPOTrainer(model=model, args=config, train_dataset=dataset,
                                          processing_class=word_tokenizer())
        self.model = self.trainer.model
        self.optimizer = self.trainer.create_optimizer()
        self.trainer.current_gradient_accumulation_steps = 1  # set by the training loop
        rows = [self.trainer.train_dataset[i] for i in range(args.batch_size)]
        self.inputs = self.trainer._prepare_inputs(self.trainer.data_collator(rows))
        ids = self.inputs["input_ids"]
        expected = np.concatenate([data["prompt"], data["responses"][:, 0]], 1)
        if tuple(ids.shape) != (2 * args.batch_size, args.prompt_len + args.response_len) or \
                not np.array_equal(ids[:args.batch_size].numpy(), expected):
            raise RuntimeError(f"TRL's batch is not the t5x_lite data: {tuple(ids.shape)}")
        self.optimizer_name = (f"{type(self.optimizer).__name__}"
                               f"(fused={self.optimizer.defaults.get('fused')})")

    def step(self):
        loss = self.trainer.training_step(self.model, self.inputs)
        self.trainer._clip_grad_norm(self.model)
        self.optimizer.step()
        self.model.zero_grad()
        self.loss = loss.item()


class TorchPPO:
    """One PPO iteration in PyTorch, structured as TRL's last PPOTrainer (trl <= 0.2x):
    policy + reference LlamaForCausalLM, value + reward LlamaForSequenceClassification
    (trunk, then `score` at every position), one AdamW over policy and value."""

    def __init__(self, args, data):
        import torch
        import transformers

        torch.manual_seed(0)
        config = llama_config()
        self.policy = transformers.LlamaForCausalLM(config).train()
        self.reference = copy.deepcopy(self.policy).eval().requires_grad_(False)
        self.value = transformers.LlamaForSequenceClassification(config).train()
        self.reward = transformers.LlamaForSequenceClassification(config).eval()
        self.reward.requires_grad_(False)
        self.value.load_state_dict(self.reward.state_dict())  # value starts as the RM
        params = list(self.policy.parameters()) + list(self.value.parameters())
        self.params = params
        self.optimizer = torch.optim.AdamW(
            [{"params": [p for p in params if p.ndim >= 2], "weight_decay": 0.1},
             {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}],
            lr=PPO_LR, betas=(0.9, 0.95), eps=1e-8, fused=True)  # as transformers' default
        self.queries = torch.from_numpy(data["prompt"]).long()
        self.args = args
        self.generator = torch.Generator().manual_seed(0)

    @staticmethod
    def _inputs(query_responses):
        mask = query_responses != PAD
        positions = mask.long().cumsum(1) - mask.long()
        return {"input_ids": query_responses.masked_fill(~mask, 0), "attention_mask": mask.long(),
                "position_ids": positions}

    def _logprobs(self, model, query_responses, responses):
        import torch

        lp = self.args.prompt_len
        logits = model(**self._inputs(query_responses)).logits[:, lp - 1:-1].float()  # T = 1
        token = torch.gather(torch.log_softmax(logits, -1), 2, responses[..., None])[..., 0]
        return token, logits

    def _values(self, model, query_responses):
        hidden = model.model(**self._inputs(query_responses)).last_hidden_state
        return model.score(hidden)[..., 0].float()  # [B, T]

    def rollout(self):
        import torch

        args, lp = self.args, self.args.prompt_len
        with torch.no_grad():
            query_responses = self.policy.generate(
                input_ids=self.queries, attention_mask=torch.ones_like(self.queries),
                do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                max_new_tokens=args.response_len, eos_token_id=EOS, pad_token_id=PAD)
            responses = query_responses[:, lp:]
            if responses.shape[1] < args.response_len:  # every row ended early
                responses = torch.nn.functional.pad(
                    responses, (0, args.response_len - responses.shape[1]), value=PAD)
                query_responses = torch.cat([self.queries, responses], 1)
            is_eos = responses == EOS
            ended = is_eos.any(1)
            lengths = torch.where(ended, is_eos.float().argmax(1) + 1,
                                  torch.full_like(ended, args.response_len, dtype=torch.long))
            mask = (torch.arange(args.response_len)[None] < lengths[:, None]).float()
            responses = responses.masked_fill(mask == 0, PAD)
            query_responses = torch.cat([self.queries, responses], 1)
            logprobs, _ = self._logprobs(self.policy, query_responses, responses)
            reference, _ = self._logprobs(self.reference, query_responses, responses)
            values = self._values(self.value, query_responses)[:, lp - 1:-1] * mask
            scores = self._values(self.reward, query_responses)
            score = scores.gather(1, (lp + lengths - 1)[:, None])[:, 0]
            kl = (logprobs - reference) * mask
            rewards = -KL_BETA * kl
            rewards[torch.arange(len(lengths)), lengths - 1] += score
            advantages = torch.zeros_like(rewards)
            last = torch.zeros_like(rewards[:, 0])
            for t in reversed(range(args.response_len)):  # GAE
                next_value = values[:, t + 1] if t + 1 < args.response_len else 0.0
                delta = rewards[:, t] + GAMMA * next_value - values[:, t]
                last = (delta + GAMMA * LAM * last) * mask[:, t]
                advantages[:, t] = last
            returns = advantages + values
            mean = (advantages * mask).sum() / mask.sum()
            var = (((advantages - mean) * mask) ** 2).sum() / (mask.sum() - 1)
            advantages = (advantages - mean) * torch.rsqrt(var + 1e-8) * mask
        return {"query_responses": query_responses, "responses": responses, "mask": mask,
                "logprobs": logprobs, "values": values, "advantages": advantages,
                "returns": returns, "generated": float(lengths.sum())}

    def update(self, experience):
        import torch

        args, lp = self.args, self.args.prompt_len
        size = args.batch_size // args.num_minibatches
        for _ in range(args.ppo_epochs):
            order = torch.randperm(args.batch_size, generator=self.generator)
            for start in range(0, args.batch_size, size):
                rows = order[start:start + size]
                mb = {k: v[rows] for k, v in experience.items() if k != "generated"}
                mask, n = mb["mask"], mb["mask"].sum()
                logprobs, logits = self._logprobs(self.policy, mb["query_responses"],
                                                  mb["responses"])
                values = self._values(self.value, mb["query_responses"])[:, lp - 1:-1]
                clipped_values = mb["values"] + (values - mb["values"]).clamp(-CLIP_VALUE,
                                                                              CLIP_VALUE)
                vf = 0.5 * (torch.maximum((values - mb["returns"]) ** 2,
                                          (clipped_values - mb["returns"]) ** 2) * mask).sum() / n
                ratio = torch.exp(logprobs - mb["logprobs"])
                pg = (torch.maximum(-mb["advantages"] * ratio,
                                    -mb["advantages"] * ratio.clamp(1 - CLIP, 1 + CLIP))
                      * mask).sum() / n
                loss = pg + VALUE_COEF * vf
                loss.backward()
                torch.nn.utils.clip_grad_norm_(self.params, 1.0)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                with torch.no_grad():  # the entropy statistic TRL logs
                    probs = torch.softmax(logits, -1)
                    entropy = torch.logsumexp(logits, -1) - (probs * logits).sum(-1)
                    self.entropy = float((entropy * mask).sum() / n)
        self.loss = loss.item()

    def iterate(self) -> dict[str, float]:
        rollout_s, experience = seconds(self.rollout)
        update_s, _ = seconds(lambda: self.update(experience))
        return {"rollout_s": rollout_s, "update_s": update_s,
                "generated": experience["generated"]}


# ------------------------------------------------------------------------------- report
def median_and_range(values):
    return statistics.median(values), min(values), max(values)


def ratio_text(ours, theirs, times=False):
    """Median and range over rounds of the throughput ratio t5x_lite / torch, from per-round
    throughputs, or from per-round times when `times` (then torch time / t5x_lite time)."""
    ratios = [t / o if times else o / t for o, t in zip(ours, theirs)]
    m, lo, hi = median_and_range(ratios)
    return f"{m:.2f}x ({lo:.2f}-{hi:.2f})"


def main():
    args = parse_args()
    if args.batch_size % args.num_minibatches:
        raise SystemExit("batch_size must be a multiple of num_minibatches")
    import torch
    import transformers
    import trl

    torch.set_num_threads(os.cpu_count())
    transformers.logging.set_verbosity_error()
    b, lp, lr = args.batch_size, args.prompt_len, args.response_len
    print(f"jax {jax.__version__} on {jax.devices()[0].device_kind} ({jax.device_count()} "
          f"device), torch {torch.__version__} ({torch.get_num_threads()} threads), transformers "
          f"{transformers.__version__}, trl {trl.__version__}; {os.cpu_count()} CPU cores, "
          f"load average {os.getloadavg()[0]:.2f}")
    print(f"model: decoder_tiny dims, vocab {VOCAB}, d={EMBED}, {LAYERS} layers, {HEADS} heads "
          f"({KV_HEADS} kv) x {HEAD_DIM}, SwiGLU {MLP}, untied, float32")
    print(f"batch {b}, prompt {lp}, response {lr} tokens; {args.rounds} rounds, "
          f"{args.dpo_steps} DPO steps per side per round; PPO {args.ppo_epochs} epochs x "
          f"{args.num_minibatches} minibatch(es)")
    data = make_data(args)
    started = time.perf_counter()
    sides = {}
    with tempfile.TemporaryDirectory() as workdir:
        if not args.skip_dpo:
            build_s, ours = seconds(lambda: T5xDPO(args, data))
            first_s, _ = seconds(ours.step)
            print(f"\nt5x_lite DPO: {ours.params:,} params; built in {build_s:.1f} s (reference "
                  f"log-probs included), compile + first step {first_s:.1f} s")
            build_s, theirs = seconds(lambda: TrlDPO(args, data, workdir))
            first_s, _ = seconds(theirs.step)
            print(f"TRL DPOTrainer: {sum(p.numel() for p in theirs.model.parameters()):,} params; "
                  f"built in {build_s:.1f} s (reference log-probs included), first step "
                  f"{first_s:.1f} s; optimizer {theirs.optimizer_name}")
            sides["dpo"] = (ours, theirs)
        if not args.skip_ppo:
            print("PPO on the TRL side: TRL " + trl.__version__ + " has no PPO trainer (" +
                  _ppo_import_error() + "): timing the same work in PyTorch instead")
            build_s, ours = seconds(lambda: T5xPPO(args, data))
            first_s, _ = seconds(ours.iterate)
            print(f"t5x_lite PPO Iteration: built in {build_s:.1f} s, compile + first iteration "
                  f"{first_s:.1f} s")
            build_s, theirs = seconds(lambda: TorchPPO(args, data))
            first_s, _ = seconds(theirs.iterate)
            print(f"torch PPO iteration: built in {build_s:.1f} s, first iteration {first_s:.1f} s")
            sides["ppo"] = (ours, theirs)

        peaks, dpo_times, ppo_runs = [], ([], []), ([], [])
        for r in range(args.rounds):
            order = (0, 1) if r % 2 == 0 else (1, 0)
            if "dpo" in sides:
                for side in order:
                    runner = sides["dpo"][side]
                    dpo_times[side].append(statistics.median(
                        seconds(runner.step)[0] for _ in range(args.dpo_steps)))
            if "ppo" in sides:
                for side in order:
                    ppo_runs[side].append(sides["ppo"][side].iterate())
            peaks.append(metrics.measure_cpu_peak_flops())
            print(f"round {r + 1}: " + "; ".join(
                [f"DPO {dpo_times[0][-1]:.2f} s vs {dpo_times[1][-1]:.2f} s"] * ("dpo" in sides) +
                [f"PPO rollout {ppo_runs[0][-1]['rollout_s']:.2f} s vs "
                 f"{ppo_runs[1][-1]['rollout_s']:.2f} s, update {ppo_runs[0][-1]['update_s']:.2f}"
                 f" s vs {ppo_runs[1][-1]['update_s']:.2f} s"] * ("ppo" in sides) +
                [f"peak {peaks[-1] / 1e12:.3f} TFLOP/s"]))
    peak = statistics.median(peaks)
    print(f"\nmeasured CPU peak (2048^3 f32 matmul, median of rounds): {peak / 1e12:.4f} TFLOP/s "
          f"(rounds {min(peaks) / 1e12:.4f}-{max(peaks) / 1e12:.4f})")
    rows = []
    if "dpo" in sides:
        ours, theirs = sides["dpo"]
        tokens = 2 * b * (lp + lr)
        o, t = statistics.median(dpo_times[0]), statistics.median(dpo_times[1])
        ratio = ratio_text(dpo_times[0], dpo_times[1], times=True)
        print(f"\n== DPO training step ({tokens:,} tokens = 2 x {b} x ({lp} + {lr}))")
        print(f"t5x_lite: median {o:.3f} s, {tokens / o:,.0f} tokens/s, model FLOPs "
              f"{ours.flops / 1e9:.1f} GFLOP/step (6·N·tokens + attention over rows of "
              f"{ours.row_length}), {ours.flops / o / 1e12:.4f} TFLOP/s, MFU "
              f"{ours.flops / o / peak:.1%}; loss {ours.loss:.4f}")
        print(f"TRL:      median {t:.3f} s, {tokens / t:,.0f} tokens/s, same model FLOPs: "
              f"{ours.flops / t / 1e12:.4f} TFLOP/s, MFU {ours.flops / t / peak:.1%}; "
              f"loss {theirs.loss:.4f}")
        print(f"t5x_lite / TRL tokens/s: {ratio}")
        skipped = 6 * ours.head_params * 2 * b * lp
        print(f"note: both sides project only the response positions with the output layer; "
              f"the {lp} prompt positions of each row skip ~{skipped / 1e9:.1f} GFLOP "
              f"({skipped / ours.flops:.0%} of the model FLOPs above, which count them)")
        rows.append(("DPO step", f"{tokens / o:,.0f}", f"{tokens / t:,.0f}", ratio,
                     f"{ours.flops / o / peak:.1%} (TRL {ours.flops / t / peak:.1%})"))
    if "ppo" in sides:
        print(f"\n== PPO iteration (rollout of {b} x {lr} new tokens, update "
              f"{args.ppo_epochs} x {args.num_minibatches})")
        update_tokens = (lp + lr) * b * args.ppo_epochs
        names = ("t5x_lite", "torch")
        rollout_tps = [[x["generated"] / x["rollout_s"] for x in runs] for runs in ppo_runs]
        update_tps = [[update_tokens / x["update_s"] for x in runs] for runs in ppo_runs]
        for side in (0, 1):
            runs = ppo_runs[side]
            rollout_s = statistics.median(x["rollout_s"] for x in runs)
            print(f"{names[side]:9s} rollout median {rollout_s:.3f} s, "
                  f"{statistics.median(rollout_tps[side]):,.0f} generated tokens/s "
                  f"(generated {statistics.median(x['generated'] for x in runs):.0f}); update "
                  f"median {statistics.median(x['update_s'] for x in runs):.3f} s, "
                  f"{statistics.median(update_tps[side]):,.0f} tokens/s")
        logged = ppo_runs[0][-1]["logged"]
        print(f"t5x_lite's own log, last round: perf/rollout_tokens_per_second "
              f"{logged['perf/rollout_tokens_per_second']:,.1f}, perf/update_tokens_per_second "
              f"{logged['perf/update_tokens_per_second']:,.1f} (rows of {lp}+{lr}+1 tokens)")
        rollout_ratio = ratio_text(*rollout_tps)
        update_ratio = ratio_text(*update_tps)
        iteration = [[x["rollout_s"] + x["update_s"] for x in runs] for runs in ppo_runs]
        iteration_ratio = ratio_text(*iteration, times=True)
        print(f"t5x_lite / torch: rollout {rollout_ratio}, update {update_ratio}, whole "
              f"iteration {iteration_ratio}")
        rows.append(("PPO rollout (generated tokens/s)",
                     f"{statistics.median(rollout_tps[0]):,.0f}",
                     f"{statistics.median(rollout_tps[1]):,.0f}", rollout_ratio, ""))
        rows.append(("PPO update", f"{statistics.median(update_tps[0]):,.0f}",
                     f"{statistics.median(update_tps[1]):,.0f}", update_ratio, ""))
        rows.append(("PPO iteration (s, lower is better)",
                     f"{statistics.median(iteration[0]):.2f} s",
                     f"{statistics.median(iteration[1]):.2f} s", iteration_ratio, ""))
    print(f"\n| {args.rounds} rounds, peak {peak / 1e12:.3f} TFLOP/s | t5x_lite tokens/s | "
          f"TRL / torch tokens/s | t5x_lite / TRL (rounds) | MFU |")
    print("|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print(f"\ntotal {time.perf_counter() - started:.0f} s after imports")


def _ppo_import_error() -> str:
    messages = []
    try:
        from trl import PPOTrainer  # noqa: F401
    except ImportError as error:
        messages.append(f"`from trl import PPOTrainer`: {type(error).__name__}")
    try:
        import trl.experimental.ppo  # noqa: F401
    except ImportError as error:
        messages.append(f"`import trl.experimental.ppo`: {type(error).__name__}")
    return "; ".join(messages) or "imports succeeded, but this script does not drive it"


if __name__ == "__main__":
    main()
