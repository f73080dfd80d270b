"""Near-duplicate documents by MinHash LSH (datasketch), with one rule for every driver.

A document's signature is datasketch's MinHash of its word n-grams. LSH cuts the signature
into `b` bands of `r` values (datasketch's choice of b and r for the threshold); documents
sharing a band are candidates, and a candidate counts as a near-duplicate when the MinHash
estimate of their Jaccard similarity reaches the threshold.

The rule: a document is removed when it has a near-duplicate of smaller rank (steps.rank: a
hash of the text, then the id), and it records the smallest such as `duplicate_of`. That is a
pairwise fact, so it can be decided per LSH bucket: in memory with `MinHashLSH` queries
(`duplicates`), or as a Beam group-by on (band, band hash) (beam_pipeline.py) — both give the
same answer. Survivors never have a smaller-ranked near-duplicate, so a rerun removes nothing.

Defaults follow Lee et al. 2022 ("Deduplicating Training Data Makes Language Models Better",
NearDup): 5-gram shingles of space-separated words and a Jaccard threshold of 0.8. They used
9,000 hash functions; we default to datasketch's 128 permutations, which makes the estimate
coarser (standard error sqrt(J(1-J)/128) = 0.035 at J = 0.8) and the run ~70x cheaper.
"""
from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterable, Sequence

import numpy as np
from datasketch import LeanMinHash, MinHash, MinHashLSH

Ranked = tuple[tuple[str, str], str, np.ndarray]  # (rank, id, signature)


@dataclasses.dataclass(frozen=True)
class NearDedup:
    ngram: int = 5
    num_perm: int = 128
    threshold: float = 0.8
    seed: int = 1
    scheme: str = "affine32"  # datasketch 2.0's default hash family (32-bit values)
    # datasketch picks b and r to minimise weighted false-positive and false-negative rates.
    # Candidates are verified by the MinHash estimate, so a false positive costs one
    # comparison and a miss keeps a duplicate: misses weigh 9x. With 128 permutations that
    # gives b=14 bands of r=9 (a pair at J = 0.9 is a candidate with probability 0.999, at
    # 0.8 with 0.87); equal weights give b=9, r=13 and miss 7% of pairs at J = 0.9.
    lsh_weights: tuple[float, float] = (0.1, 0.9)

    def __post_init__(self):
        if self.ngram < 1 or self.num_perm < 2 or not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"NearDedup needs ngram >= 1, num_perm >= 2 and 0 < threshold "
                             f"<= 1; got {self}")

    def new_index(self) -> MinHashLSH:
        return MinHashLSH(threshold=self.threshold, num_perm=self.num_perm,
                          weights=tuple(self.lsh_weights))

    @functools.cached_property
    def hashranges(self) -> tuple[tuple[int, int], ...]:
        """datasketch's bands for this threshold and number of permutations."""
        return tuple(self.new_index().hashranges)


def shingles(text: str, n: int) -> list[bytes]:
    """The distinct word n-grams of a text (the whole text when shorter than n words)."""
    words = text.split()
    if len(words) <= n:
        return [" ".join(words).encode("utf-8")]
    return sorted({" ".join(words[i:i + n]).encode("utf-8") for i in range(len(words) - n + 1)})


def signatures(texts: Sequence[str], config: NearDedup) -> list[np.ndarray]:
    """MinHash signatures ([num_perm] hash values); `MinHash.bulk` shares the permutations."""
    sets = [shingles(text, config.ngram) for text in texts]
    return [m.hashvalues for m in MinHash.bulk(sets, num_perm=config.num_perm,
                                                  seed=config.seed, scheme=config.scheme)]


def band_keys(signature: np.ndarray, config: NearDedup) -> list[tuple[int, bytes]]:
    """The LSH buckets a signature falls in: (band, its values' bytes)."""
    return [(band, signature[start:end].tobytes())
            for band, (start, end) in enumerate(config.hashranges)]


def _lean(signature: np.ndarray, config: NearDedup) -> LeanMinHash:
    return LeanMinHash(seed=config.seed, hashvalues=signature, scheme=config.scheme)


def similarity(a: np.ndarray, b: np.ndarray, config: NearDedup) -> float:
    """datasketch's MinHash estimate of the Jaccard similarity."""
    return _lean(a, config).jaccard(_lean(b, config))


def smaller_duplicates(members: Sequence[Ranked], config: NearDedup
                       ) -> Iterable[tuple[str, tuple[tuple[str, str], str]]]:
    """Within one bucket: (id, (rank, id of a smaller-ranked near-duplicate)) pairs."""
    ordered = sorted(members, key=lambda member: member[0])
    for i, (_, doc_id, signature) in enumerate(ordered):
        for other_rank, other_id, other in ordered[:i]:
            if similarity(signature, other, config) >= config.threshold:
                yield doc_id, (other_rank, other_id)


def duplicates(items: Sequence[Ranked], config: NearDedup) -> dict[str, str]:
    """In memory: {id: id of its smallest-ranked near-duplicate} for every removed document."""
    index = config.new_index()
    by_id = {doc_id: (rank, signature) for rank, doc_id, signature in items}
    for doc_id, (_, signature) in by_id.items():
        index.insert(doc_id, _lean(signature, config))
    result = {}
    for doc_id, (rank, signature) in by_id.items():
        candidates = index.query(_lean(signature, config))
        smaller = sorted((by_id[other][0], other) for other in candidates
                         if by_id[other][0] < rank
                         and similarity(signature, by_id[other][1], config) >= config.threshold)
        if smaller:
            result[doc_id] = smaller[0][1]
    return result
