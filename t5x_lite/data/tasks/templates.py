"""Instruction templates: `(inputs, targets)` format strings rendered from a task's fields.

A template's strings use `{field}` placeholders filled from the fields a task's preprocessor
returns (all strings). The inputs may end with `{options_}`, where the answer options go, as
FLAN writes them (google-research/FLAN, `flan/preprocessors.py`):

    "OPTIONS:\n- " + "\n- ".join(options)

A task whose inputs templates use `{options_}` is a classification task (FLAN's rule). Rendered
"without options" (a Flan 2022 format), the placeholder and the blank space before it vanish.

An *inverse* template swaps the roles of the fields (write the question for this answer,
the premise for this hypothesis). FLAN mixes them into training unmarked; here they carry
`inverse=True`, and evaluation never uses them.

A template that names a field the example lacks raises `TemplateError`, naming the task, the
template and the field.
"""
from __future__ import annotations

import dataclasses
import string
from typing import Mapping, Sequence

OPTIONS_FIELD = "options_"


class TemplateError(KeyError):
    """A template asked for a field the example does not have (message names all three)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


@dataclasses.dataclass(frozen=True)
class OptionsStyle:
    """How an options list is written. The default is FLAN 2021's; Flan 2022 varies `start`
    ("", "Options:", "Choose from:") and `item` ("\n- ", "\n (A) ")."""

    start: str = "OPTIONS:"
    item: str = "\n- "
    letters: bool = False  # items as "(A) ...", "(B) ..." (the item string then holds no marker)

    def render(self, options: Sequence[str]) -> str:
        if self.letters:
            items = [f"{self.item}({chr(ord('A') + i)}) {o}" for i, o in enumerate(options)]
        else:
            items = [f"{self.item}{o}" for o in options]
        return self.start + "".join(items)


FLAN_OPTIONS = OptionsStyle()


@dataclasses.dataclass(frozen=True)
class Template:
    """One phrasing of a task: format strings for the model's inputs and targets."""

    inputs: str
    targets: str = "{answer}"
    inverse: bool = False

    @property
    def has_options(self) -> bool:
        return OPTIONS_FIELD in fields_of(self.inputs)

    def render(self, example: Mapping[str, object], *, with_options: bool = True,
               options_style: OptionsStyle = FLAN_OPTIONS, task: str = "?",
               index: int | None = None) -> tuple[str, str]:
        """(inputs, targets) text of `example` in this template. `task` and `index` (this
        template's position in its task's list) only make errors name the culprit."""
        values = {k: v for k, v in example.items() if isinstance(v, str)}
        options = example.get("options")
        if self.has_options:
            if with_options:
                if not options:
                    _missing(task, index, OPTIONS_FIELD, "options")
                values[OPTIONS_FIELD] = options_style.render(list(options))
            else:
                values[OPTIONS_FIELD] = ""
        inputs = _format(self.inputs, values, task, index)
        if self.has_options and not with_options:
            inputs = inputs.rstrip()
        return inputs, _format(self.targets, values, task, index)


def fields_of(pattern: str) -> list[str]:
    """The placeholder names of a format string, in order of appearance."""
    return [name for _, name, _, _ in string.Formatter().parse(pattern) if name]


def _format(pattern: str, values: Mapping[str, str], task: str, index: int | None) -> str:
    for name in fields_of(pattern):
        if name not in values:
            _missing(task, index, name, pattern)
    return pattern.format(**values)


def _missing(task: str, index: int | None, field: str, pattern: str):
    where = f"template {index}" if index is not None else "a template"
    raise TemplateError(f"task {task!r}, {where}: the example has no field {field!r} "
                        f"(needed by {pattern!r})")
