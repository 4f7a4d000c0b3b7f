"""The baselines' own settings: one dataclass per method, nested in the stage configs of
``antibody.config.schema`` (``method.align.vaccine``, ``method.align.repnoise``,
``method.finetune.lisa``, ``method.finetune.safeinstr``). Each default cites its source,
as in schema.py."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Optional

# left out of the resolved YAML at its default: runs keep the keys they hashed to before
# the option existed (app/study/plan.py)
from antibody.config.upload import OMIT_WHEN_DEFAULT


class HookPoint(StrEnum):
    """Where Vaccine perturbs the hidden states of each decoder layer."""

    ATTENTION = "attention"  # each self-attention module's output (released Vaccine code)
    DECODER_LAYER = "decoder_layer"  # each decoder layer's output (the paper's wording)


@dataclass
class VaccineConfig:
    """Vaccine (Huang et al. 2024, "Vaccine: Perturbation-aware Alignment for LLMs")."""

    rho: float = 5.0  # released scripts: rho 5
    hook_point: HookPoint = HookPoint.ATTENTION  # released code: self-attention outputs


class RepNoiseMask(StrEnum):
    """Which tokens RepNoise's losses and MMD cover (docs/fidelity.md, finding 4)."""

    # the answer tokens of each batch, from its own labels: what RN's paired rows select
    ANSWER = "answer"
    # the released rule (RN loss.py:93, BO copy loss_func/repnoise_loss.py:121-122, 162-163):
    # the tokens of row i that differ from row i of the other batch; on our unpaired batches
    # (as on BO's) that includes prompt tokens
    DIFFERING = "differing"


@dataclass
class TVaccineConfig:
    """T-Vaccine (Liu et al., Lslland/T-Vaccine): Vaccine's perturbation on a few sampled
    layers, sampled by their harmful-gradient norm (`methods/t_vaccine.py`)."""

    rho: float = 3.0  # released: README.md:49, `bash T-Vaccine.sh 3`
    activated_layers: int = 8  # released: script/alignment/T-Vaccine.sh:14 (S)
    interval_steps: int = 20  # released: T-Vaccine.sh:15 (J), layers resampled every J steps
    probability_steps: int = 200  # released: T-Vaccine.sh:17 (K), probabilities refreshed every K steps


@dataclass
class RepNoiseConfig:
    """RepNoise (Rosati et al. 2024, "Representation Noising"), as run by the Booster and
    Antibody baselines; the kernel settings are those of the released RepNoise loss."""

    alpha: float = 0.1  # released scripts: weight of the harmful term
    beta: float = 0.001  # released scripts: weight of the MMD-to-noise term
    kernel_num: int = 5  # released RepNoise loss.py: MMD_loss(kernel_num=5)
    kernel_mul: float = 2.0  # released RepNoise loss.py: MMD_loss(kernel_mul=2.0)
    # released RepNoise loss: the harmful NLL is averaged over every hidden state read through
    # the final norm and the LM head; false: final layer only (cheaper)
    logit_lens: bool = True
    mask: RepNoiseMask = field(default=RepNoiseMask.ANSWER, metadata=OMIT_WHEN_DEFAULT)  # ours: docs/fidelity.md


@dataclass
class LisaConfig:
    """Lisa (Huang et al. 2024, "Lazy Safety Alignment"): bi-state optimisation."""

    rho: float = 0.01  # released scripts: proximal strength
    align_steps: int = 100  # released scripts: alignment-state steps per cycle
    user_steps: int = 900  # released scripts: user-state steps per cycle
    # ours: a run shorter than min_cycles released cycles gets shorter cycles with the same
    # align:user split, so that each state occurs at least min_cycles times (docs/method.md)
    min_cycles: int = 3
    proximal_after: float = 0.1  # released scripts: proximal term after 10% of the steps


class SafeInstrMix(StrEnum):
    """How SafeInstr's demonstrations enter the upload (docs/fidelity.md, finding 5)."""

    # on top of the user's rows (n + floor(share n)): SafeInstr's own repository ("20k alpaca
    # + X safety examples") and Vaccine's copy of the mixing code (VA train.py:166-169)
    ADD = "add"
    # in place of as many of the user's benign rows, so the total stays n: Lisa's
    # repository, normal_num = (1 - p) n - guide (LI train.py:165-166)
    REPLACE = "replace"


@dataclass
class SafeInstrConfig:
    """SafeInstr (Bianchi et al. 2024, "Safety-Tuned LLaMAs")."""

    # safety demonstrations per user row: the paper found a few hundred demonstrations,
    # about 3% of the training set, enough to improve safety markedly
    share: float = 0.03
    mix: SafeInstrMix = field(default=SafeInstrMix.ADD, metadata=OMIT_WHEN_DEFAULT)


@dataclass
class ConstrainedConfig:
    """Constrained fine-tuning (Qi et al. 2025, "Safety Alignment Should Be Made More Than
    Just a Few Tokens Deep"): each answer token's cross-entropy is weighted by
    2 (1 - sigmoid(beta_t (log p(y_t) - log p_aligned(y_t)))), detached and at least 1e-3,
    with beta_t large for the first tokens. Defaults: the released fine-tuning-attack run
    (Unispac/shallow-vs-deep-alignment, README.md:231-235; finetune.py:33-41)."""

    beta: float = 0.1  # released: beta for the tokens after the prefix
    bias_factor: float = 20.0  # released: beta x 20 for the prefix tokens
    first_token_bias_factor: float = 5.0  # released: beta x 5 for the first answer token
    bias_length: int = 5  # released: the prefix is the first 5 answer tokens
    min_weight: float = 1e-3  # released: trainer.py, torch.clamp(losses_list, min=1e-3)


@dataclass
class BDSConfig:
    """Bayesian Data Scheduler (Hu et al., NeurIPS 2025; Egg-Hu/Bayesian-Data-Scheduler), its
    scalar scheduler with softmax weights: a learnt weight per upload row, trained to put
    weight where the model's loss is low, beside an alignment batch every step."""

    scheduler_lr: float = 5e-3  # released: run/scripts/0_train_eval_dbs.sh:93 (train_dbs.py:407 asserts it)
    init: float = 0.1  # released: train_dbs.py:367, every row's initial logit
    # released: train_dbs.py:182, the scheduler's AdamW (OpenRLHF create_optimizer), no decay
    scheduler_betas: tuple[float, float] = (0.9, 0.95)
    # the number of rows the weights are a softmax over (the upload's); null: data.user.n,
    # or the built training split's rows (app/stages.py, module_config)
    rows: Optional[int] = None


@dataclass
class AntidoteConfig:
    """Antidote (Huang et al. 2025, "Antidote: Post-fine-tuning Safety Alignment for Large
    Language Models against Harmful Fine-tuning"; git-disl/Antidote at 26e2ade): one-shot
    pruning, after fine-tuning, of the adapter weights with the largest Wanda score
    |W_ij| ||X_j||_2 on harmful rows (`methods/antidote.py`)."""

    # released: script/finetune/antidote_poison_ratio.sh:16; per output row, the weights whose
    # score is above the row's int(cols (1 - dense_ratio))-th smallest are zeroed (utils.py:711-723)
    dense_ratio: float = 0.1
    # harmful calibration rows, drawn from the defender's D_harm (the alignment stage's harmful
    # split, disjoint from the upload); null: all of it. Released: 2000 BeaverTails rows from
    # index 5000 on, past the fine-tuning poison (antidote_poison_ratio.sh:17, train.py:111)
    n_samples: Optional[int] = None
