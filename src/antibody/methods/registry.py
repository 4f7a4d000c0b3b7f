"""Entry points: build the stage module a config asks for; the registries, in one place.

- ``ALIGN_METHODS``: AlignMethod -> the settings that method runs (flat_align.py)
- ``LAMBDA_RULES``: LambdaMode -> lambda_t rule (lambdas.py)
- ``WEIGHTINGS``: Weighting -> weighting rule (weights.py)
"""

from __future__ import annotations

from torch import nn

from antibody.config.schema import Config
from antibody.methods.flat_align import ALIGN_METHODS, FlatAlignModule, resolve_align_settings
from antibody.methods.lambdas import LAMBDA_RULES
from antibody.methods.weighted_finetune import WeightedFinetuneModule
from antibody.methods.weights import WEIGHTINGS

__all__ = [
    "ALIGN_METHODS",
    "LAMBDA_RULES",
    "WEIGHTINGS",
    "build_align_module",
    "build_finetune_module",
    "resolve_align_settings",
]


def build_align_module(model: nn.Module, cfg: Config) -> FlatAlignModule:
    """Alignment stage for ``cfg.method.align.method`` (SFT, Booster or Antibody)."""
    return FlatAlignModule(model, cfg)


def build_finetune_module(model: nn.Module, cfg: Config) -> WeightedFinetuneModule:
    """Fine-tuning stage for ``cfg.method.finetune.weighting`` (loss form etc. from cfg)."""
    return WeightedFinetuneModule(model, cfg)
