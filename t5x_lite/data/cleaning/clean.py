"""`t5x-lite clean`: a corpus in, a cleaned TFDS dataset and its report out.

    t5x-lite clean --input=tfds:python_docs@train --output_dataset=python_docs_clean
    t5x-lite clean --input='corpus/*.jsonl' --output_dataset=web_clean --runner=DirectRunner

Without `--runner` the corpus is cleaned in this process (local.py); with one, by Apache Beam
(beam_pipeline.py) on that runner — DirectRunner here, DataflowRunner, FlinkRunner or
SparkRunner for corpora beyond one machine, with their options in `beam_options`. Either way
TFDS writes `data_dir/NAME/1.0.0/` (array_record) and the report (report.json, report.md,
plots) is written next to it. Which steps run, and their thresholds, come from gin
(runs/clean.gin).
"""
from __future__ import annotations

import itertools
import json
import shlex
import uuid
from collections.abc import Sequence

from t5x_lite import paths
from t5x_lite.data.cleaning import documents, local, output, report, steps


def clean(*, inputs: Sequence[str], output_dataset: str, data_dir: str,
          config: steps.CleaningConfig = steps.CleaningConfig(), split: str = "train",
          text_field: str = "text", input_data_dir: str | None = None,
          runner: str | None = None, beam_options: str = "",
          report_config: report.ReportConfig = report.ReportConfig()) -> dict:
    """Cleans `inputs` into the TFDS dataset `output_dataset`; returns the report."""
    output.check_name(output_dataset)
    shards = documents.shards(inputs, data_dir=input_data_dir or data_dir,
                              text_field=text_field)
    description = (f"{', '.join(inputs)} cleaned by t5x-lite clean: "
                   f"{', '.join(steps.reasons(config))}")
    if runner is None:
        outcomes = local.clean(itertools.chain.from_iterable(map(documents.read_shard, shards)),
                               config)
        examples = [(o.id, {"text": o.text, "id": o.id}) for o in outcomes if o.kept]
        target = output.write(output_dataset, data_dir, split, examples,
                              description=description)
        summary = json.loads(json.dumps(local.summarise(outcomes, config, report_config)))
    else:
        summary, target = _clean_with_beam(shards, output_dataset, data_dir, split, config,
                                           runner, beam_options, report_config, description)
    report.write(summary, target, output_dataset)
    return summary


def _clean_with_beam(shards, name, data_dir, split, config, runner, beam_options,
                     report_config, description):
    from apache_beam.options.pipeline_options import PipelineOptions

    from t5x_lite.data.cleaning import beam_pipeline  # Beam is only imported when asked for

    # The report data comes back through a file the pipeline writes next to the dataset,
    # where the workers can write (they write the dataset there too).
    report_path = paths.as_path(data_dir) / f".{name}-report-{uuid.uuid4().hex}.json"
    transform = beam_pipeline.CleanCorpus(shards, config, report_config, str(report_path))
    try:
        target = output.write(name, data_dir, split, transform, description=description,
                              beam_runner=runner,
                              beam_options=PipelineOptions(shlex.split(beam_options)))
        summary = json.loads(report_path.read_text())
    finally:
        if report_path.exists():
            report_path.unlink()
    return summary, target
