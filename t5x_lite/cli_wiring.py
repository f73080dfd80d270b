"""What each `t5x-lite` command adds to the user's gin files, and which commands train.

A training command's run file binds everything itself; every other command gets gin text
here that hands the files' macros (MODEL, VOCABULARY, MODEL_DIR, ...) to the function it runs.
"""
from __future__ import annotations

# Each inference command runs on the MODEL, VOCABULARY and MODEL_DIR the gin files define;
# anything else (decoding.Strategy.*, inference.infer.max_new_tokens, ...) is a --gin flag.
_INFERENCE_WIRING = """from __gin__ import dynamic_registration
import t5x_lite.inference as inference
import t5x_lite.decoding as decoding
inference.{fn}.model = %MODEL
inference.{fn}.vocabulary = %VOCABULARY
inference.{fn}.model_dir = %MODEL_DIR
"""
WIRING = {
    "infer": _INFERENCE_WIRING.format(fn="infer") + "inference.infer.strategy = @decoding.Strategy()",
    "score": _INFERENCE_WIRING.format(fn="score"),
    "best_of_n": "from __gin__ import dynamic_registration",  # runs/best_of_n.gin binds it
    "clean": "from __gin__ import dynamic_registration",  # runs/clean.gin binds it
    "eval": _INFERENCE_WIRING.format(fn="evaluate") + "\n".join([
        "inference.evaluate.eval_data = %EVAL_DATA",
        "inference.evaluate.feature_lengths = %TASK_FEATURE_LENGTHS",
        "inference.evaluate.objective = %OBJECTIVE",
        "inference.evaluate.data_shards = %DATA_SHARDS"]),
}
# `memorization`: extractable memorization of TRAIN_DATA, read as training read it
# (t5x_lite/memorization.py; settings as --gin.memorization.run.NAME=VALUE).
MEMORIZATION_WIRING = """from __gin__ import dynamic_registration
import t5x_lite.memorization as memorization
memorization.run.model = %MODEL
memorization.run.vocabulary = %VOCABULARY
memorization.run.model_dir = %MODEL_DIR
memorization.run.data = %TRAIN_DATA
memorization.run.objective = %OBJECTIVE
memorization.run.feature_lengths = %TASK_FEATURE_LENGTHS"""
# `embed`: sentence embeddings and nearest neighbours (t5x_lite/embeddings.py; settings as
# --gin.embeddings.run.NAME=VALUE, e.g. max_length, batch_size, max_texts).
EMBED_WIRING = """from __gin__ import dynamic_registration
import t5x_lite.embeddings as embeddings
embeddings.run.model = %MODEL
embeddings.run.vocabulary = %VOCABULARY
embeddings.run.model_dir = %MODEL_DIR"""
# `eval --tasks/--cluster/--mixture`: instruction tasks per template (task_evaluation.py).
TASK_EVAL_WIRING = """from __gin__ import dynamic_registration
import t5x_lite.task_evaluation as task_evaluation
task_evaluation.run.model = %MODEL
task_evaluation.run.vocabulary = %VOCABULARY
task_evaluation.run.model_dir = %MODEL_DIR"""
# `mixture` prints the instruction-tuning data the files bind to INSTRUCTION_DATA.
MIXTURE_WIRING = """from __gin__ import dynamic_registration
import t5x_lite.data.tasks.listing as listing
listing.mixture_lines.data = %INSTRUCTION_DATA"""
# Training jobs: (module, function, argument check run before gin builds data and models).
# Each is configured by its run file (runs/pretrain_*.gin, runs/reward_model.gin, runs/dpo.gin,
# runs/ppo.gin, runs/classifier.gin), with the same flags, errors, operative config and resume
# behaviour.
TRAINING_JOBS = {
    "train": ("t5x_lite.train_loop", "train", "check_arguments"),
    "train_reward": ("t5x_lite.rlhf.reward_model", "train_reward", "check_arguments"),
    "train_classifier": ("t5x_lite.classification", "train_classifier", "check_arguments"),
    "dpo": ("t5x_lite.rlhf.dpo", "train_dpo", None),
    "ppo": ("t5x_lite.rlhf.ppo", "train_ppo", None),
}
# Commands that run on the devices of a (possibly multi-process) job.
DISTRIBUTED_COMMANDS = (*TRAINING_JOBS, "infer", "score", "eval", "best_of_n", "memorization",
                        "embed")
# `params` counts whatever model the files bind to the MODEL macro.
PARAMS_WIRING = """from __gin__ import dynamic_registration
import t5x_lite.metrics as metrics
metrics.parameter_counts.model = %MODEL"""

# `convert --to_hf` of a training run: its gin MODEL is handed to export_hf.
EXPORT_WIRING = """from __gin__ import dynamic_registration
import t5x_lite.interop.convert as convert
convert.export_hf.model = %MODEL"""

# `compile` builds the train step from a model and a run file alone: it reads no data and
# writes nothing, so the run file's data macros and MODEL_DIR need no value.
COMPILE_WIRING = "\n".join(f"{name} = None" for name in
                           ("VOCABULARY", "TRAIN_DATA", "EVAL_DATA", "MODEL_DIR"))


def evaluates_tasks(args) -> bool:
    return any(getattr(args, name, None) for name in ("tasks", "cluster", "mixture"))


def for_command(args) -> str:
    """The gin text a non-training command adds to the files (args: the parsed flags)."""
    if args.command == "compile":
        return COMPILE_WIRING
    if args.command == "eval" and evaluates_tasks(args):
        return TASK_EVAL_WIRING
    if args.command == "mixture":
        return MIXTURE_WIRING
    if args.command == "memorization":
        return MEMORIZATION_WIRING
    if args.command == "embed":
        return EMBED_WIRING
    return WIRING.get(args.command, PARAMS_WIRING)
