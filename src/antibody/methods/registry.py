"""Entry points: build the stage module a config asks for; the registries, in one place.

- ``ALIGN_MODULES``: AlignMethod -> the alignment-stage LightningModule that runs it
- ``FINETUNE_MODULES``: FinetuneMethod -> the fine-tuning-stage LightningModule that runs it
- ``FLAT_METHODS``: the flat-alignment methods -> the settings each runs (flat_align.py)
- ``LAMBDA_RULES``: LambdaMode -> lambda_t rule (lambdas.py)
- ``WEIGHTINGS``: Weighting -> weighting rule (weights.py)

Any alignment method composes with any fine-tuning method: the two stages meet only
through the saved adapter (docs/method.md ("Composing methods")).
"""

from __future__ import annotations

from torch import nn

from antibody.config.schema import AlignMethod, Config, FinetuneMethod, finetune_method
from antibody.methods.base import StageModule
from antibody.methods.flat_align import FLAT_METHODS, FlatAlignModule, resolve_align_settings
from antibody.methods.lambdas import LAMBDA_RULES
from antibody.methods.lisa import LisaFinetuneModule
from antibody.methods.repnoise import RepNoiseAlignModule
from antibody.methods.vaccine import VaccineAlignModule
from antibody.methods.weighted_finetune import WeightedFinetuneModule
from antibody.methods.weights import WEIGHTINGS

__all__ = [
    "ALIGN_MODULES",
    "FINETUNE_MODULES",
    "FLAT_METHODS",
    "LAMBDA_RULES",
    "WEIGHTINGS",
    "build_align_module",
    "build_finetune_module",
    "resolve_align_settings",
]

ALIGN_MODULES: dict[AlignMethod, type[StageModule]] = {
    AlignMethod.SFT: FlatAlignModule,  # the flat passes switched off
    AlignMethod.BOOSTER: FlatAlignModule,
    AlignMethod.ANTIBODY: FlatAlignModule,
    AlignMethod.VACCINE: VaccineAlignModule,
    AlignMethod.REPNOISE: RepNoiseAlignModule,
}

FINETUNE_MODULES: dict[FinetuneMethod, type[StageModule]] = {
    FinetuneMethod.SFT: WeightedFinetuneModule,  # uniform weights
    FinetuneMethod.ANTIBODY: WeightedFinetuneModule,  # likelihood-ratio weights
    FinetuneMethod.LISA: LisaFinetuneModule,
    # the same module: SafeInstr changes the data (the DataModule's train split), not the step
    FinetuneMethod.SAFEINSTR: WeightedFinetuneModule,
}


def build_align_module(model: nn.Module, cfg: Config) -> StageModule:
    """Alignment stage for ``cfg.method.align.method``."""
    return ALIGN_MODULES[cfg.method.align.method](model, cfg)


def build_finetune_module(model: nn.Module, cfg: Config) -> StageModule:
    """Fine-tuning stage for ``cfg.method.finetune`` (method, weighting, loss form, ...)."""
    return FINETUNE_MODULES[finetune_method(cfg.method.finetune)](model, cfg)
