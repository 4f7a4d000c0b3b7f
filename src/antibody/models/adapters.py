"""LoRA adapters (peft): create from ``model.lora``, save, load to continue training, and
put earlier adapters beneath a new one (merged into an fp32 base, else stacked frozen).

Only adapter tensors are trainable; every base weight is frozen (under QLoRA the 4-bit
base cannot be trained anyway, and docs/method.md requires it never be written).
"""

from __future__ import annotations

from pathlib import Path

from peft import LoraConfig as PeftLoraConfig
from peft import PeftModel, get_peft_model
from torch import nn

from antibody.config.errors import ConfigError
from antibody.config.schema import LoraConfig, ModelConfig, Quantization
from antibody.models.errors import ModelError

ADAPTER_CONFIG_FILE = "adapter_config.json"  # written by peft's save_pretrained
TRAINED_ADAPTER = "default"  # peft's name for the first adapter; saved at the folder's top


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


def _saved_adapter(path: str | Path) -> Path:
    path = Path(path)
    if not (path / ADAPTER_CONFIG_FILE).is_file():
        raise ModelError(f"adapter path {path} has no {ADAPTER_CONFIG_FILE}: not a saved adapter")
    return path


def load_adapter(model: nn.Module, path: str | Path, *, trainable: bool = True) -> PeftModel:
    """Attach a saved adapter to ``model``; trainable by default (to continue training)."""
    path = _saved_adapter(path)
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
    # only the trained adapter: a frozen stack beneath it is recorded by path (base_adapters.json)
    model.save_pretrained(path, selected_adapters=[TRAINED_ADAPTER])
    return path


def trainable_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """(name, parameter) of every tensor the optimizer updates (the LoRA tensors under LoRA)."""
    return [(name, p) for name, p in model.named_parameters() if p.requires_grad]


def merge_adapter(model: nn.Module) -> nn.Module:
    """Fold the active adapter into the base weights and return the plain base model.

    Exact (to fp32 rounding) only on an fp32 base: ``merges_exactly`` says when to call it.
    """
    if not isinstance(model, PeftModel):
        raise ModelError(f"merge: the model has no LoRA adapter to merge ({type(model).__name__})")
    return model.merge_and_unload()


def merges_exactly(cfg: ModelConfig) -> bool:
    """Whether folding an adapter into this base keeps the model's function.

    peft's merge into a 4-bit or 8-bit base dequantises, adds the delta and quantises
    again, so a change smaller than half a quantisation step is rounded away; into a bf16
    or fp16 base the delta is rounded to 8 or 11 mantissa bits of the weight. On the
    embedded model aligned in nf4 the merge took harmful-prompt refusals from 30/32 to
    0/32 (docs/gpu.md, "Merging into a 4-bit base"). Such bases keep their adapters
    stacked and frozen instead (``load_model(base_adapters=...)``).
    """
    return cfg.quantization == Quantization.NONE and cfg.dtype == "float32"


def stack_frozen_adapter(model: nn.Module, path: str | Path, index: int) -> PeftModel:
    """Attach a saved adapter, frozen, beside any already stacked (a base that cannot merge)."""
    path = _saved_adapter(path)
    name = f"base{index}"  # peft's name of the index-th frozen adapter
    if isinstance(model, PeftModel):
        model.load_adapter(path, adapter_name=name, is_trainable=False)
        return model
    return PeftModel.from_pretrained(model, path, adapter_name=name, is_trainable=False)


def add_trained_adapter(model: nn.Module, lora: LoraConfig | None, path: str | Path | None) -> PeftModel:
    """The adapter this stage trains: loaded from ``path`` or new from ``lora``, under peft's
    "default" name, beside the frozen stack of ``stack_frozen_adapter``."""
    if not isinstance(model, PeftModel):
        return load_adapter(model, path, trainable=True) if path is not None else apply_lora(model, lora)
    if path is not None:
        model.load_adapter(_saved_adapter(path), adapter_name=TRAINED_ADAPTER, is_trainable=True)
    else:
        model.add_adapter(TRAINED_ADAPTER, peft_lora_config(lora))
    return model


def activate_stack(model: PeftModel) -> PeftModel:
    """Every adapter computes in the forward pass (peft sums their deltas); only the
    trained one ("default", if present) has gradients."""
    names = list(model.peft_config)
    model.base_model.set_adapter(names)  # marks them all trainable: the frozen ones are reset below
    frozen = [n for n in names if n != TRAINED_ADAPTER]
    if frozen:
        model.set_requires_grad(frozen, requires_grad=False)
    if TRAINED_ADAPTER in names:
        model.active_adapter = TRAINED_ADAPTER  # what save_pretrained and peft's config lookups read
    return model
