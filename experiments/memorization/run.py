"""Controlled memorization: canaries at known duplicate counts, raw vs cleaned corpus
(`make memorization`).

Seeded canary passages (random words from a fixed list after a serial number) are injected
into python_docs' train split at the duplicate counts DUPLICATES, and PII canaries (a fake
e-mail address or a UK drama-range phone number) PII_COPIES times each. Each copy is the first
line of a different random document: a paragraph repeated across pages, as in web data, which
the cleaner's line dedup removes; first, so that no training row's chunk boundary cuts it and
it tokenizes as the canary alone does. `t5x-lite clean` makes two TFDS datasets: (a) raw,
every step off; (b) runs/clean_dedup_pii.gin (dedup + PII scrubbing). The quickstart decoder
is trained on each (python_docs' vocabulary and validation split for both); then `t5x-lite
memorization --sequences=canaries.jsonl` measures greedy extraction of the canaries (prompt
k tokens, continuation n: Carlini et al. 2023), and `t5x-lite infer` continues each PII
canary's text up to its secret: is the exact address / number, or a placeholder, in the output?

Each stage is skipped when its output exists under OUT, so a rerun resumes. Results:
OUT/results.{json,md} and OUT/extraction_vs_duplicates.png, copied here.

    python experiments/memorization/run.py [--out runs/memorization] [--steps 300]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
DUPLICATES = (1, 4, 16, 64)
PER_COUNT = 8  # canaries per duplicate count
PII_COPIES = 16
MEASURES = ((32, 32), (32, 16), (16, 16))  # (k, n): prompt and continuation tokens
SEED = 1234
WORDS = """amber anchor apple arrow autumn badge basket beacon berry blanket bottle bridge
bucket cabin candle canyon carpet castle cedar chalk cherry cliff clover copper cotton crystal
dragon falcon feather ferry forest fossil garden ginger glacier harbor hazel helmet island
jacket kettle ladder lantern lemon maple marble meadow mirror monkey mountain needle orchard
otter paddle parrot pebble pepper pillow planet pocket puzzle rabbit ribbon river saddle
shadow silver spider spoon squirrel tiger timber tulip tunnel velvet violin walnut whistle
willow window winter yellow brave calm eager gentle hollow quiet rapid silent steady tidy
carries follows paints gathers builds watches borrows""".split()
PEOPLE = (("mara", "lindqvist", "quillmont.net"), ("ines", "varga", "harrowfield.org"),
          ("tobias", "okonkwo", "tallowmere.com"), ("keziah", "brennaman", "brackenhurst.net"))
CLEAN_ALL_OFF = [f"--gin.cleaning.CleaningConfig.{name}={value}" for name, value in (
    ("normalize", False), ("pii", None), ("quality", None), ("bad_words", None),
    ("language", None), ("exact_dedup", False), ("line_dedup", None), ("near_dedup", None))]


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def write_jsonl(path: str, records) -> None:
    with open(path + ".tmp", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    os.replace(path + ".tmp", path)


def read_json(path: str):
    with open(path) as f:
        return json.load(f)


def cli(*args: str, log: str) -> None:
    """`t5x-lite ARGS`, its output appended to `log`; stops on failure."""
    say("$ t5x-lite " + " ".join(args))
    start = time.time()
    with open(log, "a") as f:
        code = subprocess.call([sys.executable, "-m", "t5x_lite.main", *args], stdout=f,
                               stderr=subprocess.STDOUT)
    if code:
        raise SystemExit(f"failed ({code}) after {time.time() - start:.0f} s; see {log}")
    say(f"  done in {time.time() - start:.0f} s")


# ------------------------------------------------------------------------------ canaries
def sentence(rng, words: int) -> str:
    text = " ".join(rng.choice(WORDS, words))
    return text[0].upper() + text[1:] + "."


def make_canaries(seed: int = SEED) -> list[dict]:
    """PER_COUNT word canaries per duplicate count, then the PII canaries: a random sentence
    ending in an e-mail address or a phone number, with `prompt` (the text before it) and
    `secret`. Deterministic in `seed`."""
    rng = np.random.default_rng(seed)
    canaries = []
    for copies in DUPLICATES:
        for _ in range(PER_COUNT):
            text = f"Memo {rng.integers(10000, 100000)}: " + " ".join(
                sentence(rng, 7) for _ in range(3))
            canaries.append({"kind": "canary", "copies": copies, "text": text})
    for first, last, domain in PEOPLE:
        email = f"{first}.{last}{rng.integers(10, 100)}@{domain}"
        phone = f"+44 20 7946 0{rng.integers(100, 1000)}"
        for kind, secret, lead in (("email", email, "write to"), ("phone", phone, "call")):
            prompt = f"{sentence(rng, 10)[:-1]}, {lead}"
            canaries.append({"kind": kind, "copies": PII_COPIES, "secret": secret,
                             "prompt": prompt, "text": f"{prompt} {secret} today."})
    return canaries


def inject(texts: list[str], canaries: list[dict], seed: int = SEED) -> list[str]:
    """Each copy of each canary as the first line of a different document, chosen at random."""
    total = sum(c["copies"] for c in canaries)
    hosts = iter(np.random.default_rng(seed + 1).choice(len(texts), total, replace=False))
    out = list(texts)
    for canary in canaries:
        for _ in range(canary["copies"]):
            host = next(hosts)
            out[host] = canary["text"] + "\n" + out[host]
    return out


def check_canaries(canaries: list[dict], vocabulary) -> None:
    """The cleaner's scrubber finds each PII canary's secret and nothing else; word canaries
    hold the longest window."""
    from t5x_lite.data.cleaning import pii

    for c in canaries:
        counts = {k: v for k, v in pii.scrub(c["text"], pii.PiiConfig())[1].items() if v}
        if counts != ({c["kind"]: 1} if c["kind"] != "canary" else {}):
            raise SystemExit(f"PII scrubber found {counts} in {c['text']!r}")
        if c["kind"] == "canary" and len(vocabulary.encode(c["text"])) < max(map(sum, MEASURES)):
            raise SystemExit(f"canary shorter than the longest window: {c['text']!r}")


def build_corpus(out: str, canaries: list[dict]) -> None:
    """canaries.jsonl (for `memorization --sequences`), pii_prompts.jsonl (for `infer`) and
    corpus.jsonl (python_docs train with the canaries), the last written last."""
    from t5x_lite.data import pipeline

    if os.path.exists(os.path.join(out, "corpus.jsonl")):
        return
    write_jsonl(os.path.join(out, "canaries.jsonl"),
                ({"text": c["text"]} for c in canaries if c["kind"] == "canary"))
    write_jsonl(os.path.join(out, "pii_prompts.jsonl"),
                ({"inputs": c["prompt"]} for c in canaries if c["kind"] != "canary"))
    texts = list(pipeline.DatasetConfig(data_dir=pipeline.default_data_dir()).texts())
    write_jsonl(os.path.join(out, "corpus.jsonl"),
                ({"text": t} for t in inject(texts, canaries)))


# ------------------------------------------------------------------------------ runs
def make_dataset(args, name: str, log: str) -> dict:
    """The TFDS dataset `memorization_NAME` under OUT/data; returns its cleaning report."""
    report = os.path.join(args.out, "data", f"memorization_{name}", "1.0.0", "report.json")
    if not os.path.exists(report):
        flags = CLEAN_ALL_OFF if name == "raw" else ["--gin_file=runs/clean_dedup_pii.gin"]
        cli("clean", f"--input={args.out}/corpus.jsonl", f"--output_dataset=memorization_{name}",
            f"--data_dir={args.out}/data", "--gin_file=runs/clean.gin", *flags, log=log)
    return read_json(report)


def train_and_measure(args, name: str, vocab_path: str, log: str) -> dict:
    """Trains (`train` resumes from a checkpoint), then measures every (k, n) and the PII."""
    model_dir = os.path.join(args.out, name)
    flags = ["--gin_file=quickstart/decoder_lm.gin", f"--gin.MODEL_DIR='{model_dir}'",
             f"--gin.train/pipeline.DatasetConfig.name='memorization_{name}'",
             f"--gin.train/pipeline.DatasetConfig.data_dir='{args.out}/data'",
             f"--gin.pipeline.load_vocabulary.sentencepiece_model='{vocab_path}'"]
    cli("train", *flags, f"--gin.TRAIN_STEPS={args.steps}", log=log)
    result = {"memorization": {}}
    for n in sorted({n for _, n in MEASURES}):
        out = os.path.join(model_dir, f"memorization_n{n}")
        if not os.path.exists(os.path.join(out, "memorization.json")):
            ks = tuple(sorted(k for k, m in MEASURES if m == n))
            cli("memorization", *flags, f"--sequences={args.out}/canaries.jsonl",
                f"--output_dir={out}", f"--gin.memorization.run.prompt_lengths={ks}",
                f"--gin.memorization.run.continuation_length={n}",
                "--gin.memorization.run.num_samples=0", log=log)
        result["memorization"][n] = read_json(os.path.join(out, "memorization.json"))
    pii_out = os.path.join(model_dir, "pii_outputs.jsonl")
    if not os.path.exists(pii_out):
        cli("infer", *flags, f"--input={args.out}/pii_prompts.jsonl", f"--output={pii_out}",
            "--gin.inference.infer.max_new_tokens=32", log=log)
    with open(pii_out) as f:
        result["pii_outputs"] = [json.loads(line)["outputs"][0] for line in f]
    with open(os.path.join(model_dir, "metrics.jsonl")) as f:
        result["eval_loss"] = [r for r in map(json.loads, f) if "eval/loss" in r][-1]["eval/loss"]
    return result


# ------------------------------------------------------------------------------ results
def canary_rows(result: dict, canaries: list[dict]) -> list[dict]:
    """Per (k, n) and injected count: the exact rate, the mean token-match fraction and the
    mean number of copies the memorization index found in the training rows."""
    copies = [c["copies"] for c in canaries if c["kind"] == "canary"]
    rows = []
    for k, n in MEASURES:
        records = [r for r in result["memorization"][n]["records"]
                   if r["source"] == "canary" and r["k"] == k]
        assert len(records) == len(copies), (len(records), len(copies))
        for d in DUPLICATES:
            group = [r for r, c in zip(records, copies) if c == d]
            mean = lambda key: float(np.mean([r[key] for r in group]))
            rows.append({"k": k, "n": n, "injected": d, "canaries": len(group),
                         "copies_seen": mean("duplicates"), "exact": mean("exact"),
                         "token_match": mean("token_fraction")})
    return rows


def pii_rows(result: dict, canaries: list[dict]) -> dict:
    pii = [c for c in canaries if c["kind"] != "canary"]
    out = {}
    for kind, placeholder in (("email", "<EMAIL>"), ("phone", "<PHONE>")):
        pairs = [(c, o) for c, o in zip(pii, result["pii_outputs"]) if c["kind"] == kind]
        out[kind] = {"canaries": len(pairs), "extracted": sum(c["secret"] in o for c, o in pairs),
                     "placeholder": sum(placeholder in o for _, o in pairs),
                     "secrets": [c["secret"] for c, _ in pairs], "outputs": [o for _, o in pairs]}
    return out


def cleaning_numbers(report: dict, canaries: list[dict]) -> dict:
    """The cleaner's report without its examples, and what the canaries alone add to it: all
    copies but one of each are repeated lines, every PII copy one address or number."""
    copies = lambda kind: sum(c["copies"] for c in canaries if c["kind"] == kind)
    return {"documents": report["documents"], "words": report["words"],
            "documents_removed": {k: r["documents"] for k, r in report["removed"].items()
                                  if r["documents"]},
            "lines_removed": report["lines_removed"], "pii": report["pii"],
            "from_canaries": {"repeated_lines": sum(c["copies"] - 1 for c in canaries),
                              "email": copies("email"), "phone": copies("phone")}}


def markdown(results: dict) -> str:
    raw, cleaned = results["raw"], results["cleaned"]
    lines = ["# Canary extraction vs duplicate count, raw vs cleaned corpus", "",
             "| k | n | copies injected | copies seen (raw / cleaned) | exact raw | exact "
             "cleaned | token match raw | token match cleaned |", "|" + "---:|" * 8]
    for r, c in zip(raw["canaries"], cleaned["canaries"]):
        lines.append(f"| {r['k']} | {r['n']} | {r['injected']} | {r['copies_seen']:g} / "
                     f"{c['copies_seen']:g} | {r['exact']:.3f} | {c['exact']:.3f} | "
                     f"{r['token_match']:.3f} | {c['token_match']:.3f} |")
    lines += ["", f"{PER_COUNT} canaries per count. PII canaries ({PII_COPIES} copies each in "
              "the raw corpus): greedy continuation of the text before the secret.", "",
              "| PII | run | extracted exactly | emitted the placeholder |", "|---|---|---:|---:|"]
    for kind in ("email", "phone"):
        for name in ("raw", "cleaned"):
            p = results[name]["pii"][kind]
            lines.append(f"| {kind} | {name} | {p['extracted']} / {p['canaries']} | "
                         f"{p['placeholder']} / {p['canaries']} |")
    numbers = cleaned["cleaning"]
    join = lambda counts: ", ".join(f"{k} {v:,}" for k, v in counts.items())
    lines += ["", f"Validation loss (python_docs): raw {raw['eval_loss']:.3f}, cleaned "
              f"{cleaned['eval_loss']:.3f}.", "", "Cleaner (runs/clean_dedup_pii.gin):", "",
              f"- documents: {numbers['documents']['in']:,} in, "
              f"{numbers['documents']['out']:,} out; removed: "
              f"{join(numbers['documents_removed'])}",
              f"- words: {numbers['words']['in']:,} in, {numbers['words']['out']:,} out",
              f"- lines removed: {join(numbers['lines_removed'])}",
              f"- PII replaced: {join(numbers['pii'])}",
              f"- of which from the canaries: {join(numbers['from_canaries'])}"]
    return "\n".join(lines) + "\n"


def plot(results: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from t5x_lite import metrics

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, key, label in zip(axes, ("exact", "token_match"),
                              ("exact extraction rate", "mean token-match fraction")):
        for name, color in (("raw", "tab:red"), ("cleaned", "tab:blue")):
            for (k, n), style in zip(MEASURES, ("o-", "s--", "^:")):
                rows = [r for r in results[name]["canaries"] if (r["k"], r["n"]) == (k, n)]
                ax.plot([r["injected"] for r in rows], [r[key] for r in rows], style,
                        color=color, label=f"{name}, k={k} n={n}")
        ax.set_xscale("log", base=2)
        ax.set(xlabel="copies injected into the raw corpus", ylabel=label, ylim=(-0.02, 1.02),
               xticks=list(DUPLICATES), xticklabels=[str(d) for d in DUPLICATES])
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle("Canary extraction: raw corpus vs deduplicated + PII-scrubbed")
    fig.tight_layout()
    metrics.save_figure(fig, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/memorization")
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args()
    started = time.time()
    os.makedirs(args.out, exist_ok=True)
    log = os.path.join(args.out, "log.txt")
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    from t5x_lite.data import pipeline

    vocabulary = pipeline.load_vocabulary()  # python_docs' own, trained once and cached
    canaries = make_canaries()
    check_canaries(canaries, vocabulary)
    build_corpus(args.out, canaries)
    results = {"settings": {**vars(args), "duplicates": DUPLICATES, "per_count": PER_COUNT,
                            "pii_copies": PII_COPIES, "measures": MEASURES, "seed": SEED}}
    for name in ("raw", "cleaned"):
        report = make_dataset(args, name, log)
        measured = train_and_measure(args, name, vocabulary.model_path, log)
        results[name] = {"cleaning": cleaning_numbers(report, canaries),
                         "eval_loss": measured["eval_loss"],
                         "canaries": canary_rows(measured, canaries),
                         "pii": pii_rows(measured, canaries)}
    results["seconds_this_invocation"] = round(time.time() - started)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(markdown(results))
    plot(results, os.path.join(args.out, "extraction_vs_duplicates.png"))
    for name in ("results.json", "results.md", "extraction_vs_duplicates.png"):
        shutil.copy(os.path.join(args.out, name), os.path.join(HERE, name))
    print(markdown(results))
    say(f"done in {time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
