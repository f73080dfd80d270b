"""t5x_lite: pretrain, tune, align, decode and evaluate text models with JAX/Flax and gin."""

__version__ = "0.1.0"
