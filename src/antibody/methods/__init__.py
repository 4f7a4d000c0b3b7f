"""The two training stages as Lightning modules: flat alignment and weighted fine-tuning."""

from antibody.methods.flat_align import AlignSettings, FlatAlignModule, resolve_align_settings
from antibody.methods.lambdas import LambdaState, compute_lambda
from antibody.methods.registry import build_align_module, build_finetune_module
from antibody.methods.sharpness import sharpness_probe
from antibody.methods.weighted_finetune import WeightedFinetuneModule, WeightRecording
from antibody.methods.weights import WEIGHTINGS, LossForm

__all__ = [
    "WEIGHTINGS",
    "AlignSettings",
    "FlatAlignModule",
    "LambdaState",
    "LossForm",
    "WeightRecording",
    "WeightedFinetuneModule",
    "build_align_module",
    "build_finetune_module",
    "compute_lambda",
    "resolve_align_settings",
    "sharpness_probe",
]
