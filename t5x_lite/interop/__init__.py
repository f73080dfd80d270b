"""Hugging Face transformers interop: import / export checkpoints (see convert.py).

    module, params = interop.load_model(model_dir)
    logits = module.apply({"params": params}, ...)   # the model's usual features
"""
from t5x_lite.interop.convert import export_hf, import_hf, load_model

__all__ = ["export_hf", "import_hf", "load_model"]
