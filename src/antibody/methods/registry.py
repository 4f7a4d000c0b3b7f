"""Entry points: build the stage module a config asks for; the registries, in one place.

- ``ALIGN_MODULES``: AlignMethod -> the alignment-stage LightningModule that runs it
- ``FINETUNE_MODULES``: FinetuneMethod -> the fine-tuning-stage LightningModule that runs it
- ``FLAT_METHODS``: the flat-alignment methods -> the settings each runs (flat_align.py)
- ``LAMBDA_RULES``: LambdaMode -> lambda_t rule (lambdas.py)
- ``WEIGHTINGS``: Weighting -> weighting rule (weights.py)

Any alignment method composes with any fine-tuning method: the two stages meet only
through the saved adapter (docs/method.md ("Composing methods")).

A module is given its stage's config (method.align or method.finetune); the few fields of
other parts of the config that one needs are resolved here and passed explicitly
(RepNoise's noise seed, the fine-tuning detector window), so this is the one place that
reads the whole Config for a module.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from torch import nn

from antibody.config.counts import upload_rows
from antibody.config.schema import AlignMethod, Config, FinetuneMethod, finetune_method
from antibody.methods.base import StageModule
from antibody.methods.bds import BDSFinetuneModule
from antibody.methods.constrained import ConstrainedFinetuneModule
from antibody.methods.flat_align import FLAT_METHODS, FlatAlignModule, resolve_align_settings
from antibody.methods.lambdas import LAMBDA_RULES
from antibody.methods.lisa import LisaFinetuneModule
from antibody.methods.repnoise import RepNoiseAlignModule
from antibody.methods.t_vaccine import TVaccineAlignModule
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
    "detector_window",
    "resolve_align_settings",
]

ALIGN_MODULES: dict[AlignMethod, type[StageModule]] = {
    AlignMethod.SFT: FlatAlignModule,  # the flat passes switched off
    AlignMethod.BOOSTER: FlatAlignModule,
    AlignMethod.ANTIBODY: FlatAlignModule,
    AlignMethod.VACCINE: VaccineAlignModule,
    AlignMethod.REPNOISE: RepNoiseAlignModule,
    AlignMethod.T_VACCINE: TVaccineAlignModule,
}

FINETUNE_MODULES: dict[FinetuneMethod, type[StageModule]] = {
    FinetuneMethod.SFT: WeightedFinetuneModule,  # uniform weights
    FinetuneMethod.ANTIBODY: WeightedFinetuneModule,  # likelihood-ratio weights
    FinetuneMethod.LISA: LisaFinetuneModule,
    # the same module: SafeInstr changes the data (the DataModule's train split), not the step
    FinetuneMethod.SAFEINSTR: WeightedFinetuneModule,
    FinetuneMethod.CONSTRAINED: ConstrainedFinetuneModule,
    FinetuneMethod.BDS: BDSFinetuneModule,
}


def detector_window(cfg: Config) -> int:
    """Micro-batches per detector-AUROC log: method.finetune.detector_window, else one pass
    over the upload, ceil(rows / data.finetune_batch_size) with rows data.user.n, or attack.n
    for an attack that replaces the task upload (config/counts.py, upload_rows; for a
    provider's upload the app sets the key from the file's rows: antibody.app.stages.module_config)."""
    return cfg.method.finetune.detector_window or math.ceil(upload_rows(cfg)[0] / cfg.data.finetune_batch_size)


# what each module class is given of the config (its stage's node, plus named fields)
_FROM_CONFIG: dict[type[StageModule], Callable[[nn.Module, Config], StageModule]] = {
    FlatAlignModule: lambda model, cfg: FlatAlignModule(model, cfg.method.align),
    VaccineAlignModule: lambda model, cfg: VaccineAlignModule(model, cfg.method.align),
    RepNoiseAlignModule: lambda model, cfg: RepNoiseAlignModule(model, cfg.method.align, seed=cfg.run.seed),
    TVaccineAlignModule: lambda model, cfg: TVaccineAlignModule(model, cfg.method.align, seed=cfg.run.seed),
    WeightedFinetuneModule: lambda model, cfg: WeightedFinetuneModule(
        model, cfg.method.finetune, detector_window=detector_window(cfg)),
    LisaFinetuneModule: lambda model, cfg: LisaFinetuneModule(
        model, cfg.method.finetune, detector_window=detector_window(cfg)),
    ConstrainedFinetuneModule: lambda model, cfg: ConstrainedFinetuneModule(model, cfg.method.finetune),
    # the softmax runs over the upload's rows: the training split's size (app/stages.py,
    # module_config) or, for a config alone, the upload's rows (data.user.n or attack.n)
    BDSFinetuneModule: lambda model, cfg: BDSFinetuneModule(
        model, cfg.method.finetune, rows=cfg.method.finetune.bds.rows or upload_rows(cfg)[0]),
}


def build_align_module(model: nn.Module, cfg: Config) -> StageModule:
    """Alignment stage for ``cfg.method.align.method``."""
    return _FROM_CONFIG[ALIGN_MODULES[cfg.method.align.method]](model, cfg)


def build_finetune_module(model: nn.Module, cfg: Config) -> StageModule:
    """Fine-tuning stage for ``cfg.method.finetune`` (method, weighting, loss form, ...)."""
    return _FROM_CONFIG[FINETUNE_MODULES[finetune_method(cfg.method.finetune)]](model, cfg)
