"""The cleaned corpus as a TFDS dataset in array_record, which `train` reads by name.

TFDS does the writing for both drivers: given examples in memory it writes them itself; given
a Beam PTransform it runs it inside its own Beam pipeline and writes the shards from the
workers. Either way it writes into a temporary directory and renames it into place when
complete (an interrupted run leaves no dataset), and orders the records by a hash of their
key (the document id), so both drivers give byte-identical datasets.

Any dataset name works: the builder class is made for the name and never registered, and
`tfds.data_source(name, data_dir=...)` reads the result from its files alone.
"""
from __future__ import annotations

import re

import tensorflow_datasets as tfds
from etils import epath

from t5x_lite import paths

DATASET_VERSION = "1.0.0"
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


class _CleanedCorpus(tfds.core.GeneratorBasedBuilder):
    """Examples come from the cleaner: a list of (id, example) or a Beam PTransform."""

    VERSION = tfds.core.Version(DATASET_VERSION)
    code_path = epath.Path(__file__)  # tfds looks for it; its own lookup needs a backport
    RELEASE_NOTES = {DATASET_VERSION: "Written by `t5x-lite clean`."}

    def __init__(self, *, examples, split: str, description: str, **kwargs):
        self._examples, self._split, self._description = examples, split, description
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self, description=self._description,
            features=tfds.features.FeaturesDict({"text": tfds.features.Text(),
                                                 "id": tfds.features.Text()}))

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download
        return {self._split: self._generate_examples()}

    def _generate_examples(self):
        return self._examples


def check_name(name: str) -> None:
    if not _NAME.match(name):
        raise ValueError(f"--output_dataset={name!r}: a TFDS name is lower case letters, "
                         "digits and underscores, starting with a letter")


def dataset_dir(name: str, data_dir: str) -> epath.Path:
    return paths.as_path(data_dir) / name / DATASET_VERSION


def write(name: str, data_dir: str, split: str, examples, *, description: str,
          beam_runner=None, beam_options=None) -> epath.Path:
    """Writes the dataset; refuses to replace an existing one (say another name or delete
    it: a cleaned corpus is an input to experiments and is never overwritten silently)."""
    check_name(name)
    target = dataset_dir(name, data_dir)
    if (target / "dataset_info.json").exists():
        raise FileExistsError(f"{target} already holds a dataset: choose another "
                              "--output_dataset or delete it")
    with tfds.core.registered.skip_registration():
        builder_class = type(f"CleanedCorpus_{name}", (_CleanedCorpus,), {"name": name})
    builder = builder_class(examples=examples, split=split, description=description,
                            data_dir=str(paths.as_path(data_dir)), file_format="array_record")
    config = None
    if beam_runner is not None:
        config = tfds.download.DownloadConfig(beam_runner=beam_runner, beam_options=beam_options)
    builder.download_and_prepare(download_config=config)
    return target
