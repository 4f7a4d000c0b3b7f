"""LoRA adapters (peft): create from ``model.lora``, save, load to continue training, merge.

Only adapter tensors are trainable; every base weight is frozen (under QLoRA the 4-bit
base cannot be trained anyway, and docs/method.md requires it never be written).
"""

from __future__ import annotations

import logging
from pathlib import Path

from peft import LoraConfig as PeftLoraConfig
from peft import PeftModel, get_peft_model
from torch import nn

from antibody.config.errors import ConfigError
from antibody.config.schema import LoraConfig, ModelConfig
from antibody.models.errors import ModelError

log = logging.getLogger(__name__)

ADAPTER_CONFIG_FILE = "adapter_config.json"  # written by peft's save_pretrained


def peft_lora_config(lora: LoraConfig) -> PeftLoraConfig:
    return PeftLoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        bias="none",  # released scripts: LoRA matrices only
        task_type="CAUSAL_LM",
    )


def _linear_names(model: nn.Module) -> list[str]:
    return sorted({name.rsplit(".", 1)[-1] for name, mod in model.named_modules() if isinstance(mod, nn.Linear)})


def apply_lora(model: nn.Module, lora: LoraConfig) -> PeftModel:
    """Wrap ``model`` in a new LoRA adapter (B = 0, so the function is unchanged at init)."""
    try:
        return get_peft_model(model, peft_lora_config(lora))
    except ValueError as exc:
        if "target_modules" not in str(exc) and "not found" not in str(exc):
            raise
        raise ConfigError(
            f"model.lora.target_modules={list(lora.target_modules)} matches no module of the model; "
            f"its linear layers are named {_linear_names(model)} ({exc})"
        ) from exc


def load_adapter(model: nn.Module, path: str | Path, *, trainable: bool = True) -> PeftModel:
    """Attach a saved adapter to ``model``; trainable by default (to continue training)."""
    path = Path(path)
    if not (path / ADAPTER_CONFIG_FILE).is_file():
        raise ModelError(f"adapter path {path} has no {ADAPTER_CONFIG_FILE}: not a saved adapter")
    return PeftModel.from_pretrained(model, path, is_trainable=trainable)


def save_adapter(model: nn.Module, path: str | Path) -> Path:
    """Save the adapter weights and config (not the base model) into folder ``path``."""
    if not isinstance(model, PeftModel):
        raise ModelError(
            f"save_adapter: the model has no LoRA adapter ({type(model).__name__}); "
            "it was loaded with with_lora=False or model.lora.enabled=false"
        )
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    return path


def trainable_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """(name, parameter) of every tensor the optimizer updates (the LoRA tensors under LoRA)."""
    return [(name, p) for name, p in model.named_parameters() if p.requires_grad]


def merge_adapter(model: nn.Module) -> nn.Module:
    """Fold the active adapter into the base weights and return the plain base model."""
    if not isinstance(model, PeftModel):
        raise ModelError(f"merge: the model has no LoRA adapter to merge ({type(model).__name__})")
    if getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False):
        # peft dequantises, adds the delta and requantises: the function moves by the
        # quantisation error, so "preserved at init" holds only approximately.
        log.warning("merging a LoRA adapter into a quantised base: the result is re-quantised (lossy)")
    return model.merge_and_unload()


def merge_and_new_adapter(model: nn.Module, cfg: ModelConfig) -> PeftModel:
    """The "merge, then a new adapter" option of the fine-tuning stage.

    Folds the current adapter into the base and starts a fresh one from ``cfg.lora``;
    since a new adapter starts at B = 0 the model computes the same function as before.
    ``save_adapter`` then saves only the new adapter: to rebuild the model, pass the
    merged adapter's folder in ``load_model(..., base_adapters=[...])``.
    """
    if not cfg.lora.enabled:
        raise ConfigError("merge_and_new_adapter needs model.lora.enabled=true")
    return apply_lora(merge_adapter(model), cfg.lora)
