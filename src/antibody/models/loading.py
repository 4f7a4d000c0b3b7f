"""One entry point for every model: ``load_model(cfg.model)`` -> (model, tokenizer).

Dispatch goes through registries keyed by ``ModelSource`` and ``Quantization``. The
order of preparation follows peft's QLoRA recipe (docs/lightning.md ("QLoRA")): load
(quantised on its final device, since a 4-bit model cannot be re-cast with ``.to()``) ->
``prepare_model_for_kbit_training`` or gradient checkpointing -> LoRA (new, or a saved
adapter to continue training).
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from antibody.config.errors import ConfigError
from antibody.config.schema import ModelConfig, ModelSource, Quantization
from antibody.models import embedded
from antibody.models.adapters import (
    activate_stack,
    add_trained_adapter,
    load_adapter,
    merge_adapter,
    merges_exactly,
    stack_frozen_adapter,
    trainable_parameters,
)
from antibody.models.errors import ModelError
from antibody.models.placement import resolve_device
from antibody.models.tiny import build_tiny_model

log = logging.getLogger(__name__)

DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Non-reentrant checkpointing works with frozen inputs and peft (docs/lightning.md).
GRADIENT_CHECKPOINTING_KWARGS = {"use_reentrant": False}


def torch_dtype(name: str) -> torch.dtype:
    try:
        return DTYPES[name]
    except KeyError:
        raise ConfigError(f"model.dtype={name!r} is not allowed; choose one of {sorted(DTYPES)}") from None


# ---------------------------------------------------------------------------
# Tokenizers
# ---------------------------------------------------------------------------


def _hub_offline() -> bool:
    return any(
        os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on")
        for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def _hub_location(cfg: ModelConfig) -> str:
    """``model.path`` as given to ``from_pretrained``: an existing local folder or a hub id."""
    if not cfg.path:
        raise ConfigError("model.path is required when model.source=hub (a hub id or a local HF folder)")
    local = Path(cfg.path).expanduser()
    if local.is_dir():
        return str(local)
    if cfg.path.startswith(("/", ".", "~")) or local.exists():
        raise ConfigError(f"model.path={cfg.path!r} looks like a local path but is not a folder")
    return cfg.path


def _hub_error(cfg: ModelConfig, what: str, exc: Exception) -> ModelError:
    if Path(cfg.path).expanduser().is_dir():  # a local folder: the hub is not involved
        hint = f"the folder holds no loadable {what} (expected a save_pretrained folder)"
    elif _hub_offline():
        hint = (
            "the Hugging Face hub is offline (HF_HUB_OFFLINE/TRANSFORMERS_OFFLINE is set) and it is not "
            "in the local HF cache; use a local HF folder, or model.source=embedded / tiny"
        )
    else:
        hint = "check the hub id, your network and hub credentials"
    return ModelError(f"model.path={cfg.path!r}: cannot load the {what}: {hint} ({type(exc).__name__}: {exc})")


def _hub_tokenizer(cfg: ModelConfig) -> PreTrainedTokenizerBase:
    location = _hub_location(cfg)
    try:
        return AutoTokenizer.from_pretrained(location, trust_remote_code=cfg.trust_remote_code)
    except (OSError, ValueError) as exc:  # ValueError: a folder without tokenizer files
        raise _hub_error(cfg, "tokenizer", exc) from exc


def _embedded_tokenizer(cfg: ModelConfig) -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(embedded.tokenizer_dir(embedded.embedded_asset(cfg.name)))


def _tiny_tokenizer(cfg: ModelConfig) -> PreTrainedTokenizerBase:
    # ours (docs/data.md): tiny test models use SmolLM2's tokenizer (pad = eos = 2).
    return AutoTokenizer.from_pretrained(embedded.tokenizer_dir(embedded.DEFAULT_TOKENIZER_ASSET))


_TOKENIZER_LOADERS: dict[ModelSource, Callable[[ModelConfig], PreTrainedTokenizerBase]] = {
    ModelSource.HUB: _hub_tokenizer,
    ModelSource.EMBEDDED: _embedded_tokenizer,
    ModelSource.TINY: _tiny_tokenizer,
}


def load_tokenizer(cfg: ModelConfig) -> PreTrainedTokenizerBase:
    """The model's tokenizer with a pad token (eos if it has none) and right padding.

    Right padding suits training; generation code sets ``padding_side = "left"`` itself.
    """
    tok = _TOKENIZER_LOADERS[cfg.source](cfg)
    if tok.pad_token is None:
        if tok.eos_token is None:
            raise ModelError(f"the tokenizer of model {cfg.name!r} has neither a pad nor an eos token")
        tok.pad_token = tok.eos_token
    tok.padding_side = "right"
    return tok


# ---------------------------------------------------------------------------
# Quantisation (bitsandbytes)
# ---------------------------------------------------------------------------


def _compute_dtype(cfg: ModelConfig, device: torch.device) -> torch.dtype:
    # CPU: bitsandbytes 0.50 computes in fp32 there. GPU: bf16 (QLoRA's default), or fp16
    # when the run asks for fp16 explicitly.
    if device.type == "cpu":
        return torch.float32
    return torch.float16 if cfg.dtype == "float16" else torch.bfloat16


def _nf4(cfg: ModelConfig, device: torch.device) -> Any:
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,  # QLoRA paper; docs/lightning.md
        bnb_4bit_compute_dtype=_compute_dtype(cfg, device),
    )


def _int8(cfg: ModelConfig, device: torch.device) -> Any:
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_8bit=True)


_QUANTIZERS: dict[Quantization, Callable[[ModelConfig, torch.device], Any]] = {
    Quantization.NF4: _nf4,
    Quantization.INT8: _int8,
}


def _quantization_config(cfg: ModelConfig, device: torch.device) -> Any:
    if cfg.quantization == Quantization.NONE:
        return None
    if not cfg.lora.enabled:
        raise ConfigError("model.quantization needs model.lora.enabled=true (QLoRA trains adapters only)")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as exc:
        raise ModelError(
            f"model.quantization={cfg.quantization.value} needs bitsandbytes, which cannot be imported "
            f"({exc}); run `make install`"
        ) from exc
    return _QUANTIZERS[cfg.quantization](cfg, device)


# ---------------------------------------------------------------------------
# Base models
# ---------------------------------------------------------------------------


def _from_folder_or_hub(
    location: str | Path, cfg: ModelConfig, quant: Any, device: torch.device, *, trust_remote_code: bool
) -> PreTrainedModel:
    kwargs: dict[str, Any] = {"dtype": torch_dtype(cfg.dtype), "trust_remote_code": trust_remote_code}
    if cfg.attn_implementation is not None:
        kwargs["attn_implementation"] = cfg.attn_implementation
    if quant is not None:
        kwargs["quantization_config"] = quant
        kwargs["device_map"] = {"": device}  # created in place: 4-bit weights cannot be moved later
    return AutoModelForCausalLM.from_pretrained(location, **kwargs)


def _hub_model(cfg: ModelConfig, tok: PreTrainedTokenizerBase, quant: Any, device: torch.device) -> PreTrainedModel:
    location = _hub_location(cfg)
    try:
        return _from_folder_or_hub(location, cfg, quant, device, trust_remote_code=cfg.trust_remote_code)
    except OSError as exc:
        raise _hub_error(cfg, "model", exc) from exc


def _embedded_model(cfg: ModelConfig, tok: PreTrainedTokenizerBase, quant: Any, device: torch.device) -> PreTrainedModel:
    folder = embedded.model_dir(embedded.embedded_asset(cfg.name))
    # Our own converted folder: plain Llama code, never remote code.
    return _from_folder_or_hub(folder, cfg, quant, device, trust_remote_code=False)


def _tiny_model(cfg: ModelConfig, tok: PreTrainedTokenizerBase, quant: Any, device: torch.device) -> PreTrainedModel:
    model = build_tiny_model(cfg.tiny, tok, dtype=torch_dtype(cfg.dtype), attn_implementation=cfg.attn_implementation)
    if quant is None:
        return model
    # bitsandbytes quantises while from_pretrained loads weights, so the random model goes
    # through a throw-away folder (tiny: a few MB); the loaded 4-bit copy lives in memory.
    with tempfile.TemporaryDirectory(prefix="antibody-tiny-") as tmp:
        model.save_pretrained(tmp)
        return _from_folder_or_hub(tmp, cfg, quant, device, trust_remote_code=False)


_MODEL_LOADERS: dict[ModelSource, Callable[..., PreTrainedModel]] = {
    ModelSource.HUB: _hub_model,
    ModelSource.EMBEDDED: _embedded_model,
    ModelSource.TINY: _tiny_model,
}


def _enable_gradient_checkpointing(model: PreTrainedModel) -> None:
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x name
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=GRADIENT_CHECKPOINTING_KWARGS)
    else:  # pragma: no cover - older 5.x releases
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=GRADIENT_CHECKPOINTING_KWARGS)
    # Frozen embeddings (LoRA) give checkpointed blocks inputs without grad; this hook
    # makes them require grad so the recomputed blocks still backpropagate to adapters.
    model.enable_input_require_grads()
    model.config.use_cache = False  # the KV cache is useless (and warned about) under checkpointing


def _keep_cpu_4bit_differentiable(model: nn.Module) -> None:
    """Turn off bitsandbytes' one-way CPU inference repacking of 4-bit weights.

    bitsandbytes 0.50, on a CPU with AVX512-BF16, repacks a ``Linear4bit`` weight the first
    time the layer runs in eval mode without grad, and from then on every forward, in
    training too, goes through ``gemv_4bit``, which has no autograd kernel: the gradient
    stops at each quantised layer's input, and the adapters of the earlier layers stop
    learning, silently (measured on the tiny model: after one eval forward, the first
    layer's LoRA gradient was None; tests/test_qlora.py). A model that is evaluated and
    then trained (a probe, a screen, a test) must not take that path.
    """
    import bitsandbytes as bnb

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False


def _put_adapters(model: nn.Module, cfg: ModelConfig, base_adapters: Sequence[str | Path],
                  adapter_path: str | Path | None, *, with_lora: bool) -> nn.Module:
    """Earlier adapters beneath (merged or stacked frozen), then the one this run trains."""
    stacked = bool(base_adapters) and not merges_exactly(cfg)
    for index, path in enumerate(base_adapters):
        if stacked:
            model = stack_frozen_adapter(model, path, index)
        else:
            model = merge_adapter(load_adapter(model, path, trainable=False))
    if adapter_path is not None or (with_lora and cfg.lora.enabled):
        model = add_trained_adapter(model, cfg.lora, adapter_path)
    return activate_stack(model) if stacked else model


def load_model(
    cfg: ModelConfig,
    *,
    device: str | torch.device | None = None,
    with_lora: bool = True,
    adapter_path: str | Path | None = None,
    base_adapters: Sequence[str | Path] = (),
    inference: bool = False,
) -> tuple[nn.Module, PreTrainedTokenizerBase]:
    """Load model and tokenizer as ``cfg`` says.

    device: where to put the model; None leaves an unquantised model on the CPU (Lightning
        moves it) and loads a quantised one on this process's GPU, cuda:<local rank>
        (``quantized_device``), if CUDA is present, else on the CPU.
    with_lora: wrap in a new LoRA adapter from ``cfg.lora`` (if ``cfg.lora.enabled``).
    adapter_path: load this saved adapter, trainable, instead of a new one.
    base_adapters: saved adapters beneath the trained one, in order (the fine-tuning
        stage's "merge, then a new adapter"; rebuilt the same way for evaluation): merged
        into an fp32 base, stacked and frozen on any other (``merges_exactly``).
    inference: a model that is not trained (evaluation, the screen, merge-check, the base
        model writing data): no training preparation (a 4-bit model keeps its compute dtype
        in embeddings and norms; no gradient checkpointing, so generation keeps its KV
        cache); every parameter frozen, adapters included.
    """
    quantized = cfg.quantization != Quantization.NONE
    dev = resolve_device(device, quantized)
    quant = _quantization_config(cfg, dev or torch.device("cpu"))
    tok = load_tokenizer(cfg)
    model = _MODEL_LOADERS[cfg.source](cfg, tok, quant, dev or torch.device("cpu"))
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tok.pad_token_id
    if model.generation_config is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tok.pad_token_id

    if quantized:
        _keep_cpu_4bit_differentiable(model)
    # An inference load gets no training preparation: peft's QLoRA recipe upcasts embeddings,
    # norms and the head to fp32 (generation would carry fp32 hidden states and an fp32 KV
    # cache, about twice bf16's memory), and checkpointing turns the KV cache off.
    if quantized and not inference:
        from peft import prepare_model_for_kbit_training

        # Freezes the base, upcasts norms/embeddings to fp32 and, if asked, turns on
        # checkpointing with input grads (peft's QLoRA recipe).
        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=cfg.gradient_checkpointing,
            gradient_checkpointing_kwargs=GRADIENT_CHECKPOINTING_KWARGS,
        )
        if cfg.gradient_checkpointing:
            model.config.use_cache = False
    elif cfg.gradient_checkpointing and not inference:
        _enable_gradient_checkpointing(model)

    model = _put_adapters(model, cfg, base_adapters, adapter_path, with_lora=with_lora)
    if inference:
        model.requires_grad_(False)

    if dev is not None and not quantized:
        model = model.to(dev)
    n_train = sum(p.numel() for _, p in trainable_parameters(model))
    n_all = sum(p.numel() for p in model.parameters())
    log.info("loaded %s (%s): %d trainable of %d parameters", cfg.name, cfg.source.value, n_train, n_all)
    return model, tok
