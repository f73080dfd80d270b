"""Few-shot prompts (GPT-3, Brown et al. 2020; FLAN, Wei et al. 2022) from one task definition.

Zero-shot and k-shot prompts of a task differ only in how many solved demonstrations precede
the query, so both come from the same `FewShotTask`: an optional description, then k
demonstrations, then the query, each rendered as

    {input_prefix}{input}{input_output_separator}{output_prefix}{output}

and joined by `example_separator`; the query stops after `output_prefix`, where the model
continues. Which demonstrations are shown, and in what order, is a seeded choice so that an
evaluation can be rerun exactly.

A SentencePiece vocabulary that adds a dummy leading space encodes a separately encoded
target "Paris" as " Paris": with an `output_prefix` ending in a space, score the target after
`prompt(...).rstrip(" ")` so the space is not doubled.
"""
from __future__ import annotations

import dataclasses
import random
from typing import Collection, Sequence

Demonstration = tuple[str, str]


def select_demonstrations(pool: Sequence[Demonstration], k: int, seed: int,
                          exclude: Collection[str] = ()) -> list[Demonstration]:
    """`k` demonstrations drawn from `pool` without replacement, the same for the same seed.

    Demonstrations whose input is in `exclude` (typically the query itself) are never drawn.
    The draw's order is the order they appear in the prompt.
    """
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    excluded = set(exclude)
    candidates = [pair for pair in pool if pair[0] not in excluded]
    if k > len(candidates):
        raise ValueError(f"asked for {k} demonstrations but only {len(candidates)} are available")
    return random.Random(seed).sample(candidates, k)


@dataclasses.dataclass(frozen=True)
class FewShotTask:
    """How one task's examples are written into a prompt (see the module docstring)."""

    description: str = ""
    input_prefix: str = "Input: "
    output_prefix: str = "Output: "
    example_separator: str = "\n\n"
    input_output_separator: str = "\n"

    def format_example(self, input_text: str, output_text: str = "") -> str:
        """One demonstration; with no output, the query ending at the output prefix."""
        return (f"{self.input_prefix}{input_text}{self.input_output_separator}"
                f"{self.output_prefix}{output_text}")

    def prompt(self, input_text: str, demonstrations: Sequence[Demonstration] = (),
               k: int | None = None, seed: int = 0) -> str:
        """The prompt for `input_text` with k demonstrations (all given ones when k is None).

        With more than k demonstrations, `select_demonstrations(demonstrations, k, seed,
        exclude=[input_text])` picks them; with exactly k they are used in the given order.
        """
        demonstrations = [tuple(d) for d in demonstrations]
        if k is None:
            k = len(demonstrations)
        if k < 0 or k > len(demonstrations):
            raise ValueError(f"k={k} needs 0 <= k <= {len(demonstrations)} (demonstrations given)")
        if k < len(demonstrations):
            demonstrations = select_demonstrations(demonstrations, k, seed, exclude=[input_text])
        parts = [self.description] if self.description else []
        parts += [self.format_example(i, o) for i, o in demonstrations]
        parts.append(self.format_example(input_text))
        return self.example_separator.join(parts)
