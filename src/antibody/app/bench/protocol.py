"""The bench's own arguments (steps, rounds, methods, the variant axis) and the config
overrides of each variant it compares; the protocol itself is described in bench.run."""

from __future__ import annotations

from dataclasses import dataclass

from antibody.app.arguments import pop_arg
from antibody.app.bench.repair import REPAIR_METHODS
from antibody.app.bench.stats import REFERENCE, STAGE_METHODS
from antibody.config import ConfigError, compose
from antibody.config.schema import Stage

__all__ = ["Protocol", "parse_protocol", "variant_args", "variant_axis"]


@dataclass(frozen=True)
class Protocol:
    steps: int
    warmup: int
    repeats: int
    methods: dict[Stage, list[str]]  # per stage that runs: SFT first, then the enum's order
    memory: bool
    # repair methods timed once per round at the first variant (bench.repair), against the
    # round's SFT fine-tuning step
    repairs: tuple[str, ...] = ()
    # the one axis of variants compared (precision, clipping, or named sets of overrides) and
    # each variant's (label, overrides), the first the reference of the variant ratio; none:
    # the config as it is
    axis: str = "precision"
    variants: tuple[tuple[str, tuple[str, ...]], ...] = ()


def _int_arg(args: list[str], name: str, default: int, lo: int) -> tuple[int, list[str]]:
    value, args = pop_arg(args, name)
    if value is None:
        return default, args
    if not value.isdigit() or int(value) < lo:  # one line, not a traceback
        raise ConfigError(f"{name}={value}: expected an integer in [{lo}, inf)")
    return int(value), args


def _methods_arg(value: str | None) -> tuple[dict[Stage, list[str]], tuple[str, ...]]:
    known = list(dict.fromkeys([*(m for ms in STAGE_METHODS.values() for m in ms), *REPAIR_METHODS]))
    chosen = known if value is None else [m.strip() for m in value.split(",") if m.strip()]
    unknown = [m for m in chosen if m not in known]
    if unknown or not chosen:
        raise ConfigError(f"methods={value}: unknown method {', '.join(unknown) or '(none)'}; "
                          f"choose from {', '.join(known)}")
    plan = {}
    for stage, methods in STAGE_METHODS.items():
        if any(m in chosen for m in methods):  # a stage runs if a chosen method belongs to it
            plan[stage] = [REFERENCE, *(m for m in methods if m in chosen and m != REFERENCE)]
    repairs = tuple(m for m in REPAIR_METHODS if m in chosen)
    if repairs:  # a repair is given in SFT fine-tuning steps: that step is timed too
        plan.setdefault(Stage.FINETUNE, [REFERENCE])
    return plan, repairs


def parse_protocol(args: list[str]) -> tuple[Protocol, list[str]]:
    """The bench's own arguments (see the module docstring) and the config overrides left."""
    steps, args = _int_arg(args, "steps", 3, 1)
    warmup, args = _int_arg(args, "warmup", 1, 0)
    repeats, args = _int_arg(args, "repeats", 3, 1)
    methods, args = pop_arg(args, "methods")
    memory, args = pop_arg(args, "memory")
    if memory not in (None, "true", "false"):
        raise ConfigError(f"memory={memory}: expected true or false")
    precisions, args = pop_arg(args, "precisions")
    clip, args = pop_arg(args, "clip")
    spec, args = pop_arg(args, "variants")
    named = [f"{k}={v}" for k, v in (("precisions", precisions), ("clip", clip), ("variants", spec)) if v is not None]
    if len(named) > 1:
        raise ConfigError(f"{' and '.join(named)}: the bench compares one axis at a time")
    axis, variants = "precision", ()
    if precisions is not None:
        chosen = tuple(dict.fromkeys(p.strip() for p in precisions.split(",") if p.strip()))
        if not chosen:
            raise ConfigError(f"precisions={precisions}: name one or more trainer.precision values, e.g. 32-true,bf16-mixed")
        variants = tuple((p, (f"trainer.precision={p}",)) for p in chosen)
    elif clip is not None:
        clips = tuple(dict.fromkeys(c.strip() for c in clip.split(",") if c.strip()))
        if not clips or not all(_is_norm(c) for c in clips):
            raise ConfigError(f"clip={clip}: name one or more global gradient norms >= 0 (0 is off), e.g. 0,1.0")
        axis = "clipping"
        variants = tuple((f"clip {c}", (f"method.align.gradient_clip_val={c}", f"method.finetune.gradient_clip_val={c}"))
                         for c in clips)
    elif spec is not None:
        axis, variants = "variant", _variants_arg(spec)
    plan, repairs = _methods_arg(methods)
    return Protocol(steps, warmup, repeats, plan, memory != "false", repairs, axis, variants), args


def _variants_arg(spec: str) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """``label:key=value+key=value;label:...`` -> ((label, overrides), ...); a label with no
    overrides (``fp32:``) is the config as it is. Each override is checked by compose later,
    before any model loads."""
    out: dict[str, tuple[str, ...]] = {}
    for part in (p.strip() for p in spec.split(";") if p.strip()):
        label, sep, overrides = part.partition(":")
        label = label.strip()
        items = tuple(o.strip() for o in overrides.split("+") if o.strip())
        if not sep or not label or label in out or any("=" not in o for o in items):
            raise ConfigError(f"variants={spec}: expected label:key=value+key=value;label:... with distinct "
                              f"labels (at {part!r})")
        out[label] = items
    if len(out) < 2:
        raise ConfigError(f"variants={spec}: name two or more variants to compare")
    return tuple(out.items())


def _is_norm(text: str) -> bool:
    try:
        return float(text) >= 0
    except ValueError:
        return False


def variant_args(args: list[str], protocol: Protocol) -> dict[str, list[str]]:
    """The overrides of each variant the bench compares, by label; the config as it is
    (labelled by its precision) when none is named."""
    if not protocol.variants:
        return {compose(args).trainer.precision: list(args)}
    return {label: [*args, *overrides] for label, overrides in protocol.variants}


def variant_axis(protocol: Protocol) -> str:
    return protocol.axis
