"""Will it fit? The real train step compiled for TPU topologies on this CPU host (aot.py,
tpu_topology.py, `t5x-lite compile`). libtpu's compiler runs here; no TPU is used."""
import csv
import dataclasses

import pytest

from t5x_lite import aot, aot_decode, aot_search, main, optimizers, partitioning, train_loop, tpu_topology
from t5x_lite.models import decoder, encoder_decoder

TINY_DECODER = decoder.DecoderConfig(
    vocab_size=1024, embed_dim=128, num_layers=2, num_heads=4, head_dim=32, mlp_dim=256,
    mlp_activations=("silu", "linear"), position_embedding="rope")
TINY_T5 = encoder_decoder.EncoderDecoderConfig(
    vocab_size=1024, embed_dim=128, num_encoder_layers=2, num_decoder_layers=2, num_heads=4,
    head_dim=32, mlp_dim=256)
SCHEDULE = optimizers.warmup_cosine(learning_rate=1e-3, warmup_steps=10, decay_steps=100)


def build(feature_lengths):
    def build_trainer(model, mesh, *, batch_size, num_microbatches):
        return train_loop.build_trainer(
            model, optimizers.adamw, SCHEDULE, mesh, partitioning.DEFAULT_RULES,
            feature_lengths=feature_lengths, batch_size=batch_size,
            num_microbatches=num_microbatches)
    return build_trainer


def compile_on(topology: str, model, plan: aot.Plan, feature_lengths) -> aot.Report:
    slice_ = tpu_topology.parse(topology)
    return aot.compile_plan(build(feature_lengths), model, slice_, slice_.devices(), plan,
                            feature_lengths=feature_lengths)


@pytest.mark.parametrize("name, chips, shape", [
    ("v4-8", 4, (2, 2, 1)), ("v5p-16", 8, (2, 2, 2)), ("v5p-64", 32, (2, 4, 4)),
    ("v5p-128", 64, (4, 4, 4)), ("v5p-256", 128, (4, 4, 8)), ("v5p-512", 256, (4, 8, 8)),
    ("v5p-4096", 2048, (8, 16, 16)), ("v5litepod-1", 1, (1, 1)), ("v5litepod-8", 8, (2, 4)),
    ("v5e-16", 16, (4, 4)), ("v6e-128", 128, (8, 16)), ("v6e-256", 256, (16, 16)),
    ("v5p:4x4x8", 128, (4, 4, 8)), ("v5e:2x2", 4, (2, 2)),
])
def test_accelerator_types_become_the_data_sheets_slice_shapes(name, chips, shape):
    topology = tpu_topology.parse(name)
    assert topology.shape == shape and topology.num_devices == chips
    assert tpu_topology.parse(topology.accelerator_type).shape == shape


@pytest.mark.parametrize("name", ["v7-8", "v5p-12", "v5p-2", "v5litepod-512", "v5e:2x2x1",
                                  "v4:4x4", "tpu"])
def test_an_unknown_topology_is_one_line_listing_the_known_ones(name):
    with pytest.raises(ValueError, match="known: v4-N") as error:
        tpu_topology.parse(name)
    assert "\n" not in str(error.value)


def test_devices_of_v4_and_v5p_are_chips_and_slices_multiply():
    assert [d.device_kind for d in tpu_topology.parse("v4-8").devices()] == ["TPU v4"] * 4
    two = tpu_topology.parse("v5e:2x2", num_slices=2).devices()
    assert len(two) == 8 and {d.slice_index for d in two} == {0, 1}


@pytest.mark.parametrize("config", [TINY_DECODER, TINY_T5], ids=["decoder", "t5"])
def test_memory_grows_with_the_batch_and_shrinks_with_fsdp(config):
    model = (decoder.DecoderLM if config is TINY_DECODER else encoder_decoder.EncoderDecoder)(config)
    lengths = ({"targets": 256} if config is TINY_DECODER else {"inputs": 128, "targets": 32})
    base = compile_on("v5e:2x2", model, aot.Plan((4, 1, 1), 32), lengths)
    double = compile_on("v5e:2x2", model, aot.Plan((4, 1, 1), 64), lengths)
    assert base.fits and base.mesh == {"data": 4, "fsdp": 1, "model": 1}
    # Twice the rows per device: twice the batch bytes, more temporaries, the same state.
    assert double.batch_bytes == 2 * base.batch_bytes
    assert double.program.temporaries > 1.5 * base.program.temporaries
    assert double.state_bytes == base.state_bytes and double.total > base.total
    # The FLOPs XLA would count with the layers unrolled, and the model formula, agree.
    assert 0.95 < base.flops_per_device / (base.model_flops / 4) < 1.2
    assert 0.0 < base.mfu <= 1.0 and base.step_seconds > 0
    if config is TINY_DECODER:  # sharding the state is the model's business alike: one is enough
        sharded = compile_on("v5e:4x4", model, aot.Plan((1, 16, 1), 16), lengths)
        half = compile_on("v5e:4x4", model, aot.Plan((2, 8, 1), 16), lengths)
        # fsdp 16 vs 8 on the same batch: each device holds about half the state.
        assert sharded.state_bytes < 0.6 * half.state_bytes
        assert sharded.total < half.total


def test_step_flops_count_every_layer_and_remat():
    model = decoder.DecoderLM(TINY_DECODER)
    lengths = {"targets": 128}
    counted = aot.step_flops(build(lengths), model, 8)
    deeper = decoder.DecoderLM(dataclasses.replace(TINY_DECODER, num_layers=4))
    unrolled = decoder.DecoderLM(dataclasses.replace(TINY_DECODER, num_layers=4,
                                                     scan_layers=False))
    mesh = partitioning.make_mesh((1, 1, 1), None)
    trainer = build(lengths)(unrolled, mesh, batch_size=8, num_microbatches=1)
    truth = trainer.lower_train_step().cost_analysis()["flops"]
    assert aot.step_flops(build(lengths), deeper, 8) == pytest.approx(truth, rel=1e-4)
    remat = aot.step_flops(build(lengths), aot.with_remat(model, "full"), 8)
    assert remat > 1.1 * counted  # the backward pass runs the forward again


def test_search_finds_the_fsdp_plan_for_a_model_just_over_one_chip():
    # 1.54B parameters: float32 params + Adam's two moments = 17.2 GiB, over a v5e's 16 GiB.
    big = decoder.DecoderLM(decoder.DecoderConfig(
        vocab_size=32768, embed_dim=2048, num_layers=28, num_heads=16, head_dim=128,
        mlp_dim=8192, mlp_activations=("gelu",), position_embedding="rope"))
    lengths = {"targets": 128}
    slice_ = tpu_topology.parse("v5e:2x2")
    devices = slice_.devices()
    plans = aot_search.search_plans([(4, 1, 1), (1, 4, 1)], (8,), (1,), ("none",))
    reports, failed = aot_search.search(
        lambda plan: aot.compile_plan(build(lengths), big, slice_, devices, plan,
                                      feature_lengths=lengths, flops=1.0),
        plans, log=lambda line: None)
    assert not failed and [r.plan.mesh_shape for r in reports] == [(1, 4, 1), (4, 1, 1)]
    fitting, replicated = reports
    assert fitting.fits and not replicated.fits
    assert replicated.state_bytes > 16 * tpu_topology.GiB
    assert fitting.state_bytes == pytest.approx(replicated.state_bytes / 4, rel=0.01)
    assert replicated.program.out_of_memory.startswith("libtpu's compiler: RESOURCE_EXHAUSTED")
    assert replicated.verdict().startswith("does not fit: needs") and \
        "more than the 15.75 GiB of HBM a TPU v5 lite chip libtpu can use" in replicated.verdict()


GIN = ["--gin_file=models/decoder_tiny.gin", "--gin_file=runs/pretrain_decoder.gin",
       "--gin.BATCH_SIZE=8", "--gin.SEQUENCE_LENGTH=128"]


def test_cli_compiles_the_run_and_exits_3_when_it_does_not_fit(capsys):
    assert main.main(["compile", "--topology=v5litepod-4", *GIN]) == 0
    out = capsys.readouterr().out
    assert "v5litepod-4 (v5e:2x2: 4 TPU v5 lite chips" in out and "fits:" in out
    assert "params + optimizer state" in out and "roofline step time" in out
    # Tensor parallelism over 4 of a 4-head model on one v5e chip's worth of HBM... made tiny.
    code = main.main(["compile", "--topology=v5litepod-4", *GIN, "--gin.BATCH_SIZE=4096",
                      "--gin.SEQUENCE_LENGTH=512"])
    out = capsys.readouterr().out
    assert code == aot.EXIT_DOES_NOT_FIT and out.strip().splitlines()[-1].startswith(
        "does not fit: needs")


@pytest.mark.parametrize("gin, prompt, cache", [
    (["--gin_file=models/decoder_tiny.gin", "--gin_file=runs/pretrain_decoder.gin",
      "--gin.SEQUENCE_LENGTH=128"], 64, 128),
    (["--gin_file=models/t5_1_1_tiny.gin", "--gin_file=runs/pretrain_t5.gin",
      "--gin.INPUTS_LENGTH=128", "--gin.TARGETS_LENGTH=32"], 128, 32)], ids=["decoder", "t5"])
def test_cli_decode_compiles_prefill_and_step(capsys, gin, prompt, cache):
    assert main.main(["compile", "--topology=v5e:2x2", *gin, "--gin.BATCH_SIZE=8",
                      "--decode"]) == 0
    out = capsys.readouterr().out
    assert f"decoding   8 rows, prompt {prompt} tokens, cache {cache} slots" in out
    prefill, step = out.split("\nprefill:\n")[1].split("\nstep:\n")
    for program in (prefill, step):
        assert "compiled in" in program and "roofline time" in program and "fits:" in program
    assert ", cache " in step  # the step's arguments hold the key/value cache


def test_decoding_memory_grows_with_rows_and_cache():
    model = decoder.DecoderLM(TINY_DECODER)
    slice_ = tpu_topology.parse("v5e:2x2")
    mesh = partitioning.make_mesh((4, 1, 1), slice_.devices())
    trainer = build({"targets": 256})(model, mesh, batch_size=8, num_microbatches=1)
    small = aot_decode.compile_decoding(trainer, batch=8, prompt_length=64, max_length=128)
    long = aot_decode.compile_decoding(trainer, batch=8, prompt_length=64, max_length=256)
    assert long.cache_bytes == 2 * small.cache_bytes > 0
    assert long.params_bytes == small.params_bytes
    # Rows are split over the 4 data shards: per device, 2 rows x 128 slots x 2 layers of
    # keys and values (4 heads x 32, float32).
    assert small.cache_bytes >= 2 * 128 * 2 * 2 * 4 * 32 * 4
    assert long.step.xla_bytes > small.step.xla_bytes  # a step reads the whole cache


def test_cli_search_writes_the_table_and_csv(capsys, tmp_path):
    path = tmp_path / "search.csv"
    code = main.main(["compile", "--topology=v5e:2x2", *GIN, "--search",
                      "--search_model_parallel=1,2", "--search_microbatches=1",
                      "--search_remat=own", f"--csv={path}"])
    out = capsys.readouterr().out
    assert code == 0 and "| fits | data | fsdp | model |" in out and "best: mesh" in out
    rows = list(csv.DictReader(path.read_text().splitlines()))
    assert [(r["fsdp"], r["model"]) for r in rows] in ([("4", "1"), ("2", "2")],
                                                       [("2", "2"), ("4", "1")])
    assert float(rows[0]["tokens_per_s"]) >= float(rows[1]["tokens_per_s"])


def test_cli_multi_slice_puts_data_parallelism_over_the_slices(capsys):
    assert main.main(["compile", "--topology=v5e:2x2", "--num_slices=2", *GIN,
                      "--gin.MESH_SHAPE=(1, -1, 1)"]) == 0
    out = capsys.readouterr().out
    assert "v5litepod-4 (v5e:2x2 x 2 slices: 8 TPU v5 lite chips" in out
    # DCN (2, 1, 1) times the slice's (1, 4, 1): fsdp inside a slice, data across.
    assert "mesh {'data': 2, 'fsdp': 4, 'model': 1}" in out


def test_cli_unknown_topology_is_one_line_and_exit_2(capsys):
    assert main.main(["compile", "--topology=v9-8", *GIN]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "unknown TPU topology 'v9-8'" in err
