"""Checks run by ``compose`` before any model or data is loaded: ranges of every numeric
key, and the trainer's and logger's names against what Lightning and W&B accept (so that
a typo or a refused precision fails in a second, not after the model has loaded)."""

from __future__ import annotations

import math
from functools import lru_cache
from typing import NamedTuple, Optional

from antibody.config.attack import PERSONA_ROWS, UploadKind, attack_spec
from antibody.config.attack_rules import check_attack
from antibody.config.errors import ConfigError
from antibody.config.schema import (
    Config,
    FinetuneMethod,
    Quantization,
    RepairMethod,
    Weighting,
    finetune_method,
)

_DTYPES = ("float32", "bfloat16", "float16")


def _check(key: str, value, lo: Optional[float], hi: Optional[float], *, lo_open=False, hi_open=False):
    if value is None:
        return
    bad = isinstance(value, float) and not math.isfinite(value)
    if lo is not None:
        bad |= value <= lo if lo_open else value < lo
    if hi is not None:
        bad |= value >= hi if hi_open else value > hi
    if bad:
        left = "(" if lo_open else "["
        right = ")" if hi_open else "]"
        lo_s = "-inf" if lo is None else f"{lo:g}"
        hi_s = "inf" if hi is None else f"{hi:g}"
        raise ConfigError(f"{key}={value} is out of range; allowed: {left}{lo_s}, {hi_s}{right}")


def _check_finetune_method(method: Optional[FinetuneMethod], weighting: Weighting) -> None:
    """SFT means uniform weights and Antibody means non-uniform ones, so a run's method name
    never hides what it trained with; Lisa and SafeInstr compose with any weighting; the
    constrained objective weights tokens, so its rows stay uniform."""
    if method is FinetuneMethod.SFT and weighting is not Weighting.UNIFORM:
        raise ConfigError(
            f"method.finetune.method=sft trains with uniform weights, but method.finetune.weighting="
            f"{weighting.value}; use method.finetune.method=antibody for a weighting"
        )
    if method in (FinetuneMethod.CONSTRAINED, FinetuneMethod.BDS) and weighting is not Weighting.UNIFORM:
        what = "weights tokens, not rows" if method is FinetuneMethod.CONSTRAINED else "learns its own row weights"
        raise ConfigError(
            f"method.finetune.method={method.value} {what}, but method.finetune.weighting="
            f"{weighting.value}; set method.finetune.weighting=uniform"
        )
    if method is FinetuneMethod.ANTIBODY and weighting is Weighting.UNIFORM:
        raise ConfigError(
            "method.finetune.method=antibody with method.finetune.weighting=uniform is plain SFT; "
            "use method.finetune.method=sft (or choose a weighting)"
        )


# fp16 mixed precision: its GradScaler scales only the loss given to manual_backward, while
# every stage also checks and combines gradients itself (the flat terms from autograd.grad,
# Vaccine's hidden-state gradients, the non-finite skip), unscaled: docs/lightning.md
# ("Precision"). The same set as methods/base.py's StageModule.UNSUPPORTED_PRECISION, which
# still guards a Trainer built by hand.
REFUSED_PRECISIONS = ("16-mixed",)
# strategies that train in processes they spawn: the module the launching process holds
# afterwards has the weights back but not its own state (weight records, counters), so the
# run's files would be wrong; `ddp` (one process per device, each running the stage) is right
SPAWNING_STRATEGIES = ("ddp_spawn", "ddp_fork", "ddp_notebook")
# transformers' attention implementations a model can be switched to for training
# (PreTrainedModel.set_attn_implementation); the GPU kernels need their packages
ATTENTION_KERNELS = ("eager", "sdpa", "flash_attention_2", "flex_attention")
# W&B's documented modes, if wandb itself cannot be asked (it is a dependency: a fallback only)
_WANDB_MODES = ("online", "offline", "disabled")


class TrainerChoices(NamedTuple):
    precision: tuple[str, ...]  # Lightning's precision strings, aliases included
    aliases: dict[str, str]  # alias -> Lightning's unified name ("16" -> "16-mixed")
    accelerator: tuple[str, ...]
    strategy: tuple[str, ...]
    logger_mode: tuple[str, ...]


@lru_cache(maxsize=1)
def trainer_choices() -> TrainerChoices:
    """The names Lightning's Trainer and wandb.init accept, asked of the installed packages
    (imported here, not at module level: Lightning takes seconds to import)."""
    from typing import get_args

    # the Literal types Lightning's accelerator connector validates precision against
    from lightning.fabric.plugins.precision.precision import (
        _PRECISION_INPUT_STR,
        _PRECISION_INPUT_STR_ALIAS,
        _PRECISION_INPUT_STR_ALIAS_CONVERSION,
    )
    from lightning.pytorch.accelerators import AcceleratorRegistry
    from lightning.pytorch.strategies import StrategyRegistry

    try:
        from wandb.sdk.wandb_settings import Settings

        modes = get_args(Settings.model_fields["mode"].annotation) or _WANDB_MODES
    except ImportError:
        modes = _WANDB_MODES
    return TrainerChoices(
        precision=(*get_args(_PRECISION_INPUT_STR), *get_args(_PRECISION_INPUT_STR_ALIAS)),
        aliases=dict(_PRECISION_INPUT_STR_ALIAS_CONVERSION),
        # "auto" and "gpu" are accepted by the connector besides the registry's names
        accelerator=("auto", "gpu", *sorted(AcceleratorRegistry.available_accelerators())),
        strategy=("auto", *sorted(StrategyRegistry.available_strategies())),
        logger_mode=tuple(modes),
    )


# The values our own config files use, each accepted by the pinned Lightning 2.6 and wandb
# 0.31 (tests/test_config.py checks them against trainer_choices()): a config that uses only
# these is checked without importing Lightning and wandb, which takes seconds, so that a study's
# dry run is not mostly imports. Any other value is checked against the installed packages.
COMMON_CHOICES = TrainerChoices(
    precision=("32-true", "bf16-mixed", "16-mixed", "32", "bf16", "16"),
    aliases={"32": "32-true", "bf16": "bf16-mixed", "16": "16-mixed"},
    accelerator=("auto", "cpu", "gpu", "cuda"),
    strategy=("auto", "ddp"),
    logger_mode=("online", "offline", "disabled"),
)


def _choices_for(cfg: Config) -> TrainerChoices:
    t, c = cfg.trainer, COMMON_CHOICES
    common = (t.precision in c.precision and t.accelerator in c.accelerator and t.strategy in c.strategy
              and cfg.logger.mode in c.logger_mode)
    return c if common else trainer_choices()


def _one_of(key: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}={value!r} is not allowed; choose one of {', '.join(allowed)}")


def check_in_process_strategy(strategy: str) -> None:
    """Refuse strategies that train in spawned processes (SPAWNING_STRATEGIES)."""
    if str(strategy).startswith(SPAWNING_STRATEGIES):
        raise ConfigError(
            f"trainer.strategy={strategy!r} trains in spawned processes, whose module state "
            "(weight records, counters) never comes back to write the run; use trainer.strategy=ddp "
            "(docs/multi-gpu.md)"
        )


def _check_trainer(cfg: Config) -> None:
    t, choices = cfg.trainer, _choices_for(cfg)
    _one_of("trainer.precision", t.precision, choices.precision)
    _one_of("trainer.accelerator", t.accelerator, choices.accelerator)
    _one_of("trainer.strategy", t.strategy, choices.strategy)
    check_in_process_strategy(t.strategy)
    _check("trainer.devices", t.devices, 1, None)
    _check("trainer.num_nodes", t.num_nodes, 1, None)
    # batch sizes are global: each of the devices x num_nodes processes takes an equal share
    # (data/datamodule.py checks it again when fit starts; here before any model loads)
    world = t.devices * t.num_nodes
    if world > 1:
        for key in ("align_batch_size", "harmful_batch_size", "finetune_batch_size"):
            size = getattr(cfg.data, key)
            if size % world:
                raise ConfigError(
                    f"data.{key}={size} is not divisible by trainer.devices x trainer.num_nodes = {world} "
                    "(the batch size is global; each process takes batch_size / processes rows)"
                )
    if t.attention is not None:
        _one_of("trainer.attention", t.attention, ATTENTION_KERNELS)
    _one_of("logger.mode", cfg.logger.mode, choices.logger_mode)
    precision = choices.aliases.get(t.precision, t.precision)
    if precision in REFUSED_PRECISIONS:
        raise ConfigError(
            f"trainer.precision={t.precision!r} ({precision}, fp16 with a gradient scaler) is refused: the "
            "stages build and check gradients outside the scaler (docs/lightning.md, \"Precision\"); "
            "use bf16-mixed (GPU) or 32-true"
        )
    # "-true" precisions (and Transformer Engine) convert the model's weights; a
    # bitsandbytes model cannot be re-cast (docs/lightning.md, "QLoRA"): it keeps its own
    # compute dtype, so mixed precision or 32-true only
    if cfg.model.quantization != Quantization.NONE and not (precision == "32-true" or precision.endswith("-mixed")):
        raise ConfigError(
            f"trainer.precision={t.precision!r} re-casts the model's weights, which a model.quantization="
            f"{cfg.model.quantization.value} model cannot be; use bf16-mixed (GPU) or 32-true"
        )


def _check_attack_ranges(cfg: Config) -> None:
    """The attack's contradictions (attack_rules.check_attack), then the range of each key it reads:
    a factor of 1 would make high_lr or long the poison attack under another name."""
    check_attack(cfg)
    a = cfg.attack
    spec = attack_spec(a.name)
    reads = spec.reads
    if "n" in reads:  # identity_shift: as many conversations as are written
        _check("attack.n", a.n, 1, PERSONA_ROWS if spec.upload is UploadKind.PERSONA else None)
    if "lr_factor" in reads:
        _check("attack.lr_factor", a.lr_factor, 1, None, lo_open=True)
    if "steps_factor" in reads:
        _check("attack.steps_factor", a.steps_factor, 2, None)
    if "held_out" in reads:
        _check("attack.held_out", a.held_out, 1, None)
    if "prefill" in reads and not a.prefill.strip():
        raise ConfigError("attack.prefill is empty: self_written needs the start of a compliant answer "
                          "for the attacked model to continue (default 'Sure, here is')")


def validate(cfg: Config) -> None:
    """Raise ConfigError naming the key, the value and the allowed range."""
    # first: a bad attack factor would otherwise surface as the fine-tuning value it produced
    _check_attack_ranges(cfg)
    m, d, a, f = cfg.model, cfg.data, cfg.method.align, cfg.method.finetune
    if m.dtype not in _DTYPES:
        raise ConfigError(f"model.dtype={m.dtype!r} is not allowed; choose one of {_DTYPES}")
    if m.quantization != Quantization.NONE and not m.lora.enabled:
        raise ConfigError("model.quantization needs model.lora.enabled=true (QLoRA trains adapters only)")
    _check("model.lora.r", m.lora.r, 1, None)
    _check("model.lora.alpha", m.lora.alpha, 0, None, lo_open=True)
    _check("model.lora.dropout", m.lora.dropout, 0, 1, hi_open=True)
    if m.lora.enabled and not m.lora.target_modules:
        raise ConfigError("model.lora.target_modules is empty; name at least one module (e.g. q_proj)")
    for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "intermediate_size"):
        _check(f"model.tiny.{k}", getattr(m.tiny, k), 1, None)
    if m.tiny.hidden_size % m.tiny.num_attention_heads:
        raise ConfigError("model.tiny.hidden_size must be a multiple of model.tiny.num_attention_heads")
    if m.tiny.num_attention_heads % m.tiny.num_key_value_heads:
        raise ConfigError("model.tiny.num_attention_heads must be a multiple of model.tiny.num_key_value_heads")

    _check("data.max_length", d.max_length, 8, None)
    for k in ("align_batch_size", "harmful_batch_size", "finetune_batch_size", "eval_batch_size",
              "generation_batch_size", "generation_max_new_tokens"):
        _check(f"data.{k}", getattr(d, k), 1, None)
    _check("data.num_workers", d.num_workers, 0, None)
    _check("data.alignment.n_harmful", d.alignment.n_harmful, 1, None)
    _check("data.alignment.n_harmful_answers", d.alignment.n_harmful_answers, 1, None)
    _check("data.alignment.benign_prose_ratio", d.alignment.benign_prose_ratio, 0, None)
    _check("data.alignment.benign_task_ratio", d.alignment.benign_task_ratio, 0, None)
    if not d.alignment.harmful_prompt_sources:
        raise ConfigError("data.alignment.harmful_prompt_sources is empty; name at least one source")
    if not d.eval.harmful_prompt_sources:
        raise ConfigError("data.eval.harmful_prompt_sources is empty; name at least one source")
    _check("data.user.n", d.user.n, 1, None)
    _check("data.user.p", d.user.p, 0, 1)
    _check("data.user.benign_prose_share", d.user.benign_prose_share, 0, 1)
    for k in ("n_harmful", "n_benign", "n_task"):
        _check(f"data.eval.{k}", getattr(d.eval, k), 1, None)
    _check("task.n_train_pool", cfg.task.n_train_pool, 1, None)
    _check("task.max_new_tokens", cfg.task.max_new_tokens, 1, None)

    _check("method.align.rho", a.rho, 0, None)
    _check("method.align.lam", a.lam, 0, None)
    _check("method.align.lambda2", a.lambda2, 0, None)
    _check("method.align.eta", a.eta, 0, None)
    _check("method.align.xi", a.xi, 0, None)
    _check("method.align.ema_momentum", a.ema_momentum, 0, 1, hi_open=True)
    _check("method.align.lr", a.lr, 0, None, lo_open=True)
    _check("method.align.weight_decay", a.weight_decay, 0, None)
    _check("method.align.max_steps", a.max_steps, 1, None)
    _check("method.align.accumulate_grad_batches", a.accumulate_grad_batches, 1, None)
    _check("method.align.gradient_clip_val", a.gradient_clip_val, 0, None)  # 0: off
    _check("method.align.max_consecutive_nonfinite", a.max_consecutive_nonfinite, 1, None)
    _check("method.finetune.tau", f.tau, 0, None, lo_open=True)
    _check("method.finetune.lr", f.lr, 0, None, lo_open=True)
    _check("method.finetune.weight_decay", f.weight_decay, 0, None)
    _check("method.finetune.max_steps", f.max_steps, 1, None)
    _check("method.finetune.accumulate_grad_batches", f.accumulate_grad_batches, 1, None)
    _check("method.finetune.gradient_clip_val", f.gradient_clip_val, 0, None)  # 0: off
    _check("method.finetune.max_consecutive_nonfinite", f.max_consecutive_nonfinite, 1, None)
    _check("method.align.vaccine.rho", a.vaccine.rho, 0, None)
    _check("method.align.t_vaccine.rho", a.t_vaccine.rho, 0, None)
    _check("method.align.t_vaccine.activated_layers", a.t_vaccine.activated_layers, 1, None)
    _check("method.align.t_vaccine.interval_steps", a.t_vaccine.interval_steps, 1, None)
    _check("method.align.t_vaccine.probability_steps", a.t_vaccine.probability_steps, 1, None)
    _check("method.align.repnoise.alpha", a.repnoise.alpha, 0, None)
    _check("method.align.repnoise.beta", a.repnoise.beta, 0, None)
    _check("method.align.repnoise.kernel_num", a.repnoise.kernel_num, 1, None)
    _check("method.align.repnoise.kernel_mul", a.repnoise.kernel_mul, 1, None, lo_open=True)
    _check("method.finetune.lisa.rho", f.lisa.rho, 0, None)
    _check("method.finetune.lisa.align_steps", f.lisa.align_steps, 1, None)
    _check("method.finetune.lisa.user_steps", f.lisa.user_steps, 1, None)
    _check("method.finetune.lisa.min_cycles", f.lisa.min_cycles, 1, None)
    _check("method.finetune.lisa.proximal_after", f.lisa.proximal_after, 0, 1)
    _check("method.finetune.safeinstr.share", f.safeinstr.share, 0, 1, lo_open=True)
    _check("method.finetune.constrained.beta", f.constrained.beta, 0, None, lo_open=True)
    _check("method.finetune.constrained.bias_factor", f.constrained.bias_factor, 0, None, lo_open=True)
    _check("method.finetune.constrained.first_token_bias_factor", f.constrained.first_token_bias_factor, 0, None,
           lo_open=True)
    _check("method.finetune.constrained.bias_length", f.constrained.bias_length, 0, None)
    _check("method.finetune.constrained.min_weight", f.constrained.min_weight, 0, 2)
    _check("method.finetune.bds.scheduler_lr", f.bds.scheduler_lr, 0, None, lo_open=True)
    if finetune_method(f) is FinetuneMethod.BDS and cfg.trainer.devices > 1:
        # the scheduler's logits are no DDP parameter: each rank would learn its own rows' weights
        raise ConfigError(f"method.finetune.method=bds runs in one process (the released code runs on one GPU); "
                          f"trainer.devices={cfg.trainer.devices} asks for several")
    if f.bds.rows is not None:
        _check("method.finetune.bds.rows", f.bds.rows, 1, None)
    _check_finetune_method(f.method, f.weighting)
    r = cfg.method.repair
    _check("method.repair.antidote.dense_ratio", r.antidote.dense_ratio, 0, 1, lo_open=True, hi_open=True)
    if r.antidote.n_samples is not None:
        _check("method.repair.antidote.n_samples", r.antidote.n_samples, 1, None)
    if r.method is not RepairMethod.NONE and not cfg.model.lora.enabled:
        # the released code prunes the fine-tuning LoRA (utils.py find_layers: "lora" in name);
        # a run without an adapter saves nothing a repair could read
        raise ConfigError(f"method.repair.method={r.method.value} prunes the fine-tuned LoRA adapter; "
                          "it needs model.lora.enabled=true")

    _check("trainer.devices", cfg.trainer.devices, 1, None)
    _check_trainer(cfg)
    _check("trainer.log_every_n_steps", cfg.trainer.log_every_n_steps, 1, None)
    _check("trainer.checkpoint_every_n_steps", cfg.trainer.checkpoint_every_n_steps, 1, None)
    _check("eval.max_new_tokens", cfg.eval.max_new_tokens, 1, None)
    _check("eval.batch_size", cfg.eval.batch_size, 1, None)
    _check("eval.judge_threshold", cfg.eval.judge_threshold, 0, 1)
    _check("eval.judge_max_length", cfg.eval.judge_max_length, 8, None)
    if not cfg.run.name or "/" in cfg.run.name:
        raise ConfigError(f"run.name={cfg.run.name!r} must be a non-empty name without '/'")
