"""Mixtures of tasks: mixing rates as seqio defines them, and FLAN's held-out-cluster splits.

Rates (seqio `utils.mixing_rate_num_examples`; FLAN 2021 caps at 3,000 in `flan/mixtures.py`):

    rate(task) = min(num_examples · scale, cap) ** (1 / temperature)      cap before temperature

A member may instead carry an explicit rate. A member may itself be a mixture, whose rate is
explicit or its total number of examples through the same formula; a task inside it then gets
(seqio `Mixture.get_rate`)

    rate(task) = Σ over sub-mixtures  rate(sub) · sub.rate(task) / sub.total_rate

and each task is sampled with probability rate / Σ rates (its *share*). The sampling itself is
grain's (`MapDataset.mix`, in `instruction_pipeline.py`), not written here.

Held-out splits follow FLAN's `generate_inter_cluster_splits` (Wei et al. 2021, §3): evaluate
on one cluster, train on every other, except that reading comprehension and commonsense each
also drop "reading comprehension with commonsense" (and it drops both), paraphrase and NLI
drop each other, and a task that is also in the held-out cluster is never trained on.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Mapping, Sequence

from t5x_lite.data.tasks import task as task_lib

# Held out → clusters also left out of training (FLAN's special rules).
EXCLUDED_WITH = {
    "reading_comprehension": ("reading_comprehension_with_commonsense",),
    "commonsense": ("reading_comprehension_with_commonsense",),
    "reading_comprehension_with_commonsense": ("reading_comprehension", "commonsense"),
    "paraphrase": ("nli",),
    "nli": ("paraphrase",),
}
FLAN_2021_CAP = 3_000


@dataclasses.dataclass(frozen=True)
class ExamplesProportional:
    """seqio's examples-proportional rate: min(n · scale, cap) ** (1 / temperature)."""

    cap: float | None = FLAN_2021_CAP
    scale: float = 1.0
    temperature: float = 1.0

    def __call__(self, num_examples: int) -> float:
        if self.temperature <= 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}")
        rate = num_examples * self.scale
        if self.cap is not None:
            rate = min(rate, self.cap)
        return rate ** (1.0 / self.temperature)


@dataclasses.dataclass(frozen=True)
class Mixture:
    """Tasks and sub-mixtures with rates. `members` are names (rate from `rate`) or
    (name, explicit rate) pairs; a name is a task's, or a `Mixture` object stands for itself.
    `num_examples(task name)` counts a task's training examples (the pipeline passes one that
    reads the sources)."""

    name: str
    members: tuple = ()
    rate: Callable[[int], float] = ExamplesProportional()

    def entries(self) -> list[tuple["Mixture | str", float | None]]:
        out = []
        for member in self.members:
            if isinstance(member, (tuple, list)):
                out.append((member[0], float(member[1])))
            else:
                out.append((member, None))
        return out

    def task_names(self) -> list[str]:
        names: list[str] = []
        for member, _ in self.entries():
            more = member.task_names() if isinstance(member, Mixture) else [member]
            names.extend(n for n in more if n not in names)
        return names

    def total_examples(self, num_examples: Callable[[str], int]) -> int:
        return sum(num_examples(name) for name in self.task_names())

    def rates(self, num_examples: Callable[[str], int]) -> dict[str, float]:
        """Each task's rate (the module docstring's formulas)."""
        rates: dict[str, float] = {}
        for member, explicit in self.entries():
            if isinstance(member, Mixture):
                sub_rates = member.rates(num_examples)
                total = sum(sub_rates.values())
                weight = explicit if explicit is not None else self.rate(
                    member.total_examples(num_examples))
                for name, sub_rate in sub_rates.items():
                    rates[name] = rates.get(name, 0.0) + weight * sub_rate / total
            else:
                rate = explicit if explicit is not None else self.rate(num_examples(member))
                rates[member] = rates.get(member, 0.0) + rate
        return rates

    def shares(self, num_examples: Callable[[str], int]) -> dict[str, float]:
        """Sampling probability of each task: its rate over the sum of rates."""
        rates = self.rates(num_examples)
        total = sum(rates.values())
        if total <= 0:
            raise ValueError(f"mixture {self.name!r} has no examples to sample")
        return {name: rate / total for name, rate in rates.items()}

    def only(self, keep: Callable[[str], bool], name: str | None = None) -> "Mixture":
        """The same mixture over the tasks `keep` accepts (empty sub-mixtures dropped)."""
        members = []
        for member, explicit in self.entries():
            if isinstance(member, Mixture):
                member = member.only(keep)
                if not member.members:
                    continue
            elif not keep(member):
                continue
            members.append(member if explicit is None else (member, explicit))
        return dataclasses.replace(self, name=name or self.name, members=tuple(members))


# --------------------------------------------------------------------------- held-out splits
def held_out_split(held_out: str, task_names: Sequence[str],
                   cluster_table: Mapping[str, Sequence[str]] | None = None
                   ) -> tuple[list[str], list[str]]:
    """(training tasks, held-out evaluation tasks) for one held-out cluster, FLAN's rules."""
    table = cluster_table if cluster_table is not None else task_lib.clusters(task_names)
    if held_out not in table:
        raise ValueError(f"held-out cluster {held_out!r} has no tasks here; clusters: "
                         f"{sorted(table)}")
    skipped = {held_out, *EXCLUDED_WITH.get(held_out, ())}
    evaluate = [t for t in task_names if t in set(table[held_out])]
    banned = set(evaluate)  # a task in the held-out cluster is never trained on
    train: list[str] = []
    for cluster, members in table.items():
        if cluster in skipped:
            continue
        train.extend(t for t in members if t in task_names and t not in banned
                     and t not in train)
    return [t for t in task_names if t in train], evaluate


def hold_out(mixture: Mixture, cluster: str | None,
             keep_clusters: Sequence[str] | None = None) -> Mixture:
    """`mixture` without the tasks FLAN leaves out when `cluster` is held out (`None`: the
    whole mixture). `keep_clusters` further limits training to those clusters (the
    "fewer training clusters" ablation)."""
    names = mixture.task_names()
    train = names if cluster is None else held_out_split(cluster, names)[0]
    if keep_clusters is not None:
        allowed = set(keep_clusters)
        train = [t for t in train if allowed & set(task_lib.get(t).clusters)]
    suffix = "" if cluster is None else f"_without_{cluster}"
    return mixture.only(set(train).__contains__, name=mixture.name + suffix)


# --------------------------------------------------------------------------------- registry
_MIXTURES: dict[str, Mixture] = {}


def register(mixture: Mixture) -> Mixture:
    if mixture.name in _MIXTURES and _MIXTURES[mixture.name] != mixture:
        raise ValueError(f"a mixture named {mixture.name!r} is already registered")
    _MIXTURES[mixture.name] = mixture
    return mixture


def get(name: str, rate: Callable[[int], float] | None = None) -> Mixture:
    """The registered mixture `name`, or a task's name as the mixture of that task alone
    (tuning on one task); `rate` replaces its rate function (e.g. another cap)."""
    tasks = task_lib.names()  # task modules register their mixtures too
    if name not in _MIXTURES and name in tasks:
        return Mixture(name, (name,), rate or ExamplesProportional())
    if name not in _MIXTURES:
        raise KeyError(f"no mixture or task named {name!r}; mixtures: {sorted(_MIXTURES)}")
    mixture = _MIXTURES[name]
    return mixture if rate is None else dataclasses.replace(mixture, rate=rate)


def names() -> list[str]:
    task_lib.names()
    return sorted(_MIXTURES)
