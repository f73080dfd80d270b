"""How an example is shown to the model: zero- or few-shot, with or without options, with
the template's instruction or without one (FLAN's ablations).

Few-shot follows Flan 2022 (`flan/v2/templates.py` FewShotPattern, `few_shot.py`): each
exemplar, drawn from the train split and never the query itself, is written as

    exemplar inputs + x_y_delimiter + exemplar targets + example_separator

(delimiter "\n\n", separator "\n\n\n"), all in the query's template, and the query follows as
"{inputs}{final_suffix}". Exemplars are dropped from the end until the inputs fit the token
budget (Flan 2022: 1,920); a few-shot case left with no exemplar is dropped.

`instructions` chooses FLAN 2021's ablation (Wei et al. 2021, §4.3): 'template' (the normal
instruction), 'none' (the input fields alone, one a line, then the options) or 'task_name'
(the same, after "[task name]").
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

from t5x_lite.data.tasks.task import Example, Task

INSTRUCTIONS = ("template", "none", "task_name")


@dataclasses.dataclass(frozen=True)
class Format:
    """One way of writing examples (see the module docstring)."""

    name: str = "zero_shot"
    shots: int = 0
    with_options: bool = True
    instructions: str = "template"
    x_y_delimiter: str = "\n\n"
    example_separator: str = "\n\n\n"
    final_suffix: str = ""
    max_input_tokens: int = 1920

    def __post_init__(self):
        if self.instructions not in INSTRUCTIONS:
            raise ValueError(f"instructions must be one of {INSTRUCTIONS}, got "
                             f"{self.instructions!r}")
        if self.shots < 0:
            raise ValueError(f"shots must be >= 0, got {self.shots}")


ZERO_SHOT = Format()
ZERO_SHOT_NO_OPTIONS = Format("zero_shot_no_options", with_options=False)


def flan_2022_formats(shots: int = 3, max_input_tokens: int = 1920,
                      instructions: str = "template") -> tuple:
    """Flan 2022's four formats mixed equally, as (Format, rate) pairs: zero/few-shot ×
    with/without options."""
    return tuple((Format(f"{'few' if k else 'zero'}_shot{'' if o else '_no_options'}",
                         shots=k, with_options=o, instructions=instructions,
                         max_input_tokens=max_input_tokens), 1.0)
                 for k in (0, shots) for o in (True, False))


def zero_shot_formats(instructions: str = "template", with_options: bool = True) -> tuple:
    """FLAN 2021's one format (zero-shot, options shown), as a (Format, rate) tuple."""
    return ((Format("zero_shot", with_options=with_options, instructions=instructions), 1.0),)


def render_plain(task: Task, example: Example, fmt: Format,
                 template_index: int) -> tuple[str, str]:
    """One example as (inputs, targets) text without exemplars."""
    if fmt.instructions == "template":
        return task.render(example, template_index, with_options=fmt.with_options)
    lines = [example[field] for field in task.input_fields()]
    if fmt.with_options and task.is_classification:
        lines.append(task.options_style.render(example["options"]))
    inputs = "\n".join(lines)
    if fmt.instructions == "task_name":
        inputs = f"[{task.name}] {inputs}"
    return inputs, example["answer"]


def render(task: Task, example: Example, fmt: Format, template_index: int,
           exemplars: Sequence[Example] = (),
           count_tokens: Callable[[str], int] = len) -> tuple[str, str] | None:
    """(inputs, targets) of `example` in `fmt`; None for a few-shot case whose exemplars do
    not fit `fmt.max_input_tokens` (as measured by `count_tokens`)."""
    query, targets = render_plain(task, example, fmt, template_index)
    if fmt.shots == 0:
        return query, targets
    shown = [render_plain(task, e, fmt, template_index) for e in exemplars[: fmt.shots]]
    blocks = [f"{i}{fmt.x_y_delimiter}{t}{fmt.example_separator}" for i, t in shown]
    tail = f"{query}{fmt.final_suffix}"
    while blocks and count_tokens("".join(blocks) + tail) > fmt.max_input_tokens:
        blocks.pop()
    if not blocks:
        return None
    return "".join(blocks) + tail, targets
