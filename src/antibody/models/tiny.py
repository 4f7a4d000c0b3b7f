"""The tiny random-init Llama used by tests (ours, docs/data.md: hidden 64-256, 2-4 layers
train a LoRA step in well under a second on CPU)."""

from __future__ import annotations

from typing import Optional

import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerBase

from antibody.config.schema import TinyModelConfig

# Shared with SmolLM2 so that anything that fits the embedded model fits the tiny one
# (SmolLM2's config: max_position_embeddings 8192, rope_theta 1e5, tied embeddings).
_MAX_POSITIONS = 8192
_ROPE_THETA = 100000.0


def tiny_llama_config(
    tiny: TinyModelConfig,
    tokenizer: PreTrainedTokenizerBase,
    attn_implementation: Optional[str] = None,
) -> LlamaConfig:
    """LlamaConfig from ``model.tiny``; vocabulary and special ids from the tokenizer."""
    kwargs = {}
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=tiny.hidden_size,
        num_hidden_layers=tiny.num_hidden_layers,
        num_attention_heads=tiny.num_attention_heads,
        num_key_value_heads=tiny.num_key_value_heads,
        intermediate_size=tiny.intermediate_size,
        max_position_embeddings=_MAX_POSITIONS,
        rope_parameters={"rope_type": "default", "rope_theta": _ROPE_THETA},
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **kwargs,
    )


def build_tiny_model(
    tiny: TinyModelConfig,
    tokenizer: PreTrainedTokenizerBase,
    *,
    dtype: torch.dtype = torch.float32,
    attn_implementation: Optional[str] = None,
) -> LlamaForCausalLM:
    """Random-init Llama; the same ``tiny.seed`` gives identical weights.

    The global RNG is forked, so building a model does not shift the random stream of
    the caller (data shuffling, dropout) and vice versa.
    """
    config = tiny_llama_config(tiny, tokenizer, attn_implementation)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(tiny.seed)
        model = LlamaForCausalLM(config)
    return model.to(dtype)
