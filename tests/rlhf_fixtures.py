"""Small real preference data and tiny models for the preference-learning job tests.

The comparisons are ranked by VADER (vaderSentiment, human valence ratings): the labeler the
end-to-end experiment uses, standing in for people. Texts are short so that a character-level
vocabulary keeps the tests fast.
"""
import json

import flax.linen as nn
import jax
import jax.numpy as jnp

from t5x_lite.models import decoder, model_format
from t5x_lite.models import encoder_decoder as ed

PROMPTS = ["the film was", "my day is", "this food tastes", "the weather feels", "our team is",
           "the music sounds", "that book seems", "the trip was", "his answer was",
           "the garden looks", "her voice is", "the game felt"]
WORDS = ["great", "awful", "fine", "lovely", "bad", "terrible", "good", "sad", "happy", "dull"]


class CharVocabulary:
    """Ids 3.. for printable characters; 0 pad, 1 EOS, 2 unknown (as the model format)."""

    pad_id, eos_id, unk_id = 0, 1, 2
    vocab_size = 64

    def encode(self, text):
        return [3 + (ord(c) - 32) % 61 if 32 <= ord(c) < 127 else 2 for c in text]

    def decode(self, ids):
        out = []
        for i in ids:
            if i == self.eos_id:
                break
            if i >= 3:
                out.append(chr(32 + (int(i) - 3)))
        return "".join(out)


def valence(text: str) -> float:
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    return SentimentIntensityAnalyzer().polarity_scores(text)["compound"]


def write_comparisons(path, k: int = 3) -> str:
    """K-way rankings of single-word replies by VADER's compound score."""
    with open(path, "w") as f:
        for i, prompt in enumerate(PROMPTS):
            replies = [WORDS[(i + 3 * j) % len(WORDS)] for j in range(k)]
            order = sorted(range(k), key=lambda j: -valence(f"{prompt} {replies[j]}"))
            f.write(json.dumps({"prompt": prompt, "responses": replies, "ranking": order}) + "\n")
    return str(path)


def write_prompts(path) -> str:
    with open(path, "w") as f:
        for prompt in PROMPTS:
            f.write(json.dumps({"prompt": prompt}) + "\n")
    return str(path)


def tiny_decoder():
    config = decoder.DecoderConfig(vocab_size=64, embed_dim=32, num_layers=2, num_heads=4,
                                   head_dim=8, mlp_dim=64, format=model_format.ModelFormat())
    return decoder.DecoderLM(config)


def tiny_t5():
    config = ed.EncoderDecoderConfig(vocab_size=64, embed_dim=32, num_encoder_layers=1,
                                     num_decoder_layers=1, num_heads=4, head_dim=8, mlp_dim=64)
    return ed.EncoderDecoder(config)


def save_lm(module, directory, seed=0):
    """A random 'SFT' model directory as `convert` writes it (params-only checkpoint)."""
    from t5x_lite import checkpoints

    if module.architecture == "encoder_decoder":
        args = (jnp.ones((1, 4), jnp.int32), jnp.ones((1, 4), jnp.int32))
    else:
        args = (jnp.ones((1, 4), jnp.int32),)
    params = nn.unbox(module.init(jax.random.key(seed), *args)["params"])
    checkpoints.save_params(str(directory), params)
    return str(directory), params
