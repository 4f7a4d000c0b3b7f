"""Model loading: embedded (GGUF -> cached HF folder), tiny (random-init Llama), hub;
LoRA / QLoRA adapters."""

from antibody.models.adapters import (
    apply_lora,
    load_adapter,
    merge_adapter,
    merges_exactly,
    save_adapter,
    trainable_parameters,
)
from antibody.models.cache import cache_root
from antibody.models.errors import ModelError
from antibody.models.loading import load_model, load_tokenizer, torch_dtype

__all__ = [
    "ModelError",
    "apply_lora",
    "cache_root",
    "load_adapter",
    "load_model",
    "load_tokenizer",
    "merge_adapter",
    "merges_exactly",
    "save_adapter",
    "torch_dtype",
    "trainable_parameters",
]
