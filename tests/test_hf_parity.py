"""`t5x-lite score` and `t5x-lite infer` on imported transformers models equal transformers.

Tiny random LLaMA (bos 1, eos 2, no pad) and GPT-2 (BPE-like: id 0 is a real token, bos =
eos = the last id) are built locally, converted with `t5x-lite convert`, and run through the
CLI on the converted directory's model.gin alone, with pre-tokenized JSONL (no SentencePiece
vocabulary comes with them). transformers reads each row as its tokenizer would feed it:
[bos] + inputs + targets. Batches mix prompts of different lengths.
"""
import json

import numpy as np
import pytest
import torch
import transformers

from t5x_lite import main as cli

VOCAB = 96
LLAMA = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5,
             bos_token_id=1, eos_token_id=2, pad_token_id=None, max_position_embeddings=128)
GPT2 = dict(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64,
            bos_token_id=VOCAB - 1, eos_token_id=VOCAB - 1)
# Inputs of different lengths (one empty), targets with id 0 among them.
SCORED = [([5, 9, 13], [0, 8, 7]), ([], [20, 0, 22, 23]), ([40, 41, 42, 43, 44, 45, 46], [3]),
          ([11], [12, 13])]
PROMPTS = [[5, 9, 13, 0], [40], [7, 7, 8, 9, 10, 11, 12, 13, 14], [0, 3]]
NEW_TOKENS = 8


def _random_hf_model(kind):
    torch.manual_seed(0)
    if kind == "llama":
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**LLAMA))
    else:
        model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**GPT2))
    with torch.no_grad():  # O(1) logits: ties between the top tokens are then unlikely
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape)
            if p.ndim == 1:
                p.copy_(noise * 0.1 + (0.0 if name.endswith("bias") else 1.0))
            else:
                p.copy_(noise * (1.0 if "wte" in name or "embed" in name or "wpe" in name
                                 else p.shape[-1] ** -0.5))
    return model.eval()


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def converted(request, tmp_path_factory):
    path = tmp_path_factory.mktemp(request.param)
    hf_model = _random_hf_model(request.param)
    hf_model.save_pretrained(str(path / "hf"))
    assert cli.main(["convert", "--from_hf", str(path / "hf"), "--to", str(path / "ours")]) == 0
    return request.param, hf_model, path


def _write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def _read_jsonl(path):
    return [json.loads(line) for line in open(path)]


def test_score_equals_transformers(converted):
    kind, hf_model, path = converted
    bos, eos = hf_model.config.bos_token_id, hf_model.config.eos_token_id
    source = _write_jsonl(path / "score.jsonl",
                          [{"inputs": i, "targets": t} for i, t in SCORED])
    assert cli.main(["score", f"--gin_file={path / 'ours' / 'model.gin'}", "--input", source,
                     "--output", str(path / "scores.jsonl"), "--gin.inference.score.batch_size=3"]
                    ) == 0
    ours = [r["log_likelihood"] for r in _read_jsonl(path / "scores.jsonl")]
    expected = []
    for inputs, targets in SCORED:
        row = [bos] + inputs + targets + [eos]  # `score` appends EOS to the targets
        with torch.no_grad():
            logits = hf_model(torch.tensor([row])).logits[0].double()
        log_probs = torch.log_softmax(logits, -1).numpy()
        first = 1 + len(inputs)  # position of the first target in the row
        expected.append(sum(log_probs[p - 1, row[p]] for p in range(first, len(row))))
    print(kind, "score |diff|", np.abs(np.asarray(ours) - expected).max())
    np.testing.assert_allclose(ours, expected, atol=1e-4)


def test_greedy_decoding_equals_transformers_generate(converted):
    kind, hf_model, path = converted
    bos, eos = hf_model.config.bos_token_id, hf_model.config.eos_token_id
    source = _write_jsonl(path / "prompts.jsonl", [{"inputs": p} for p in PROMPTS])
    assert cli.main(["infer", f"--gin_file={path / 'ours' / 'model.gin'}", "--input", source,
                     "--output", str(path / "out.jsonl"),
                     f"--gin.inference.infer.max_new_tokens={NEW_TOKENS}",
                     "--gin.inference.infer.batch_size=4"]) == 0
    ours = [r["tokens"][0] for r in _read_jsonl(path / "out.jsonl")]
    for prompt, tokens in zip(PROMPTS, ours):
        row = torch.tensor([[bos] + prompt])
        with torch.no_grad():
            generated = hf_model.generate(row, attention_mask=torch.ones_like(row),
                                          max_new_tokens=NEW_TOKENS, do_sample=False,
                                          eos_token_id=eos, pad_token_id=eos)
        reference = generated[0, row.shape[1]:].tolist()
        reference = reference[: reference.index(eos)] if eos in reference else reference
        assert tokens == reference, (kind, prompt)


def test_converted_model_gin_says_what_text_needs(converted, capsys):
    """model.gin alone serves token ids; text input names the missing vocabulary in one line."""
    _, _, path = converted
    source = _write_jsonl(path / "text.jsonl", [{"inputs": "hello"}])
    code = cli.main(["infer", f"--gin_file={path / 'ours' / 'model.gin'}", "--input", source,
                     "--output", str(path / "never.jsonl")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "no VOCABULARY is bound" in err[0] and "text.jsonl record 1" in err[0]
    assert not (path / "never.jsonl").exists()
