"""What an attack (config/attack.py) does to the rest of the config, and what it refuses.

`apply_attack` runs once, in `compose`, before `validate`: a hyper-parameter attack multiplies
`method.finetune.lr` (high_lr) or `method.finetune.max_steps` (long), and the benign attack
sets `data.user.benign_only=true`, so the resolved config (saved with every run, hashed into
study keys) shows what the fine-tuning stage really does. A saved config already holds the
changed values and is never passed through here again (`load_saved`, `apply_overrides`).

`check_attack` (called by both) refuses a config whose settings contradict its attack: an
attack.* key the attack does not read set away from its default, a provider's upload
(`data.user.path`) under an attack that builds its own rows, or `data.user.benign_only`
against the attack's own choice of rows.
"""

from __future__ import annotations

import dataclasses
from fractions import Fraction

from antibody.config.attack import ATTACKS, AttackConfig, AttackName, attack_keys, attack_spec
from antibody.config.errors import ConfigError
from antibody.config.schema import Config


def _readers(key: str) -> list[str]:
    return [name.value for name, spec in ATTACKS.items() if key in spec.reads]


def check_attack(cfg: Config) -> None:
    """Raise ConfigError naming the key and what the attack allows (see the module docstring)."""
    a, default = cfg.attack, AttackConfig()
    spec = attack_spec(a.name)
    for key in attack_keys():
        value = getattr(a, key)
        if key not in spec.reads and value != getattr(default, key):
            reads = ", ".join(f"attack.{k}" for k in spec.reads) or "no attack.* key"
            raise ConfigError(
                f"attack.{key}={value} has no effect with attack={a.name.value} (it reads {reads}); "
                f"drop it, or choose an attack that reads it: {_readers(key)}"
            )
    user = cfg.data.user
    if user.path and a.name is not AttackName.POISON:
        raise ConfigError(
            f"attack={a.name.value} builds its own upload, but data.user.path={user.path} is a provider's "
            "upload (the rows of the poison attack); unset data.user.path or choose attack=poison"
        )
    if spec.benign_only and not user.benign_only:
        raise ConfigError(
            f"attack={a.name.value} trains on the upload without its harmful rows, but data.user.benign_only=false; "
            "drop the override, or choose attack=poison"
        )
    if user.benign_only and not spec.benign_only and a.name is not AttackName.POISON:
        # poison with benign_only is the control's older spelling, kept so its runs keep their keys
        raise ConfigError(
            f"data.user.benign_only=true drops the upload's harmful rows, which contradicts attack={a.name.value}; "
            "use attack=benign (the benign-only control) or drop data.user.benign_only"
        )


def _times(value: float, factor: float) -> float:
    """value * factor on the decimals the config wrote (1e-5 * 10 is 1e-4, not 0.00010000000000000002)."""
    return float(Fraction(repr(float(value))) * Fraction(repr(float(factor))))


def apply_attack(cfg: Config) -> Config:
    """The config with its attack's changes made, then checked; the default attack changes nothing."""
    a, spec = cfg.attack, attack_spec(cfg.attack.name)
    ft, user = cfg.method.finetune, cfg.data.user
    if "lr_factor" in spec.reads:
        ft = dataclasses.replace(ft, lr=_times(ft.lr, a.lr_factor))
    if "steps_factor" in spec.reads:
        ft = dataclasses.replace(ft, max_steps=ft.max_steps * a.steps_factor)
    if spec.benign_only:
        user = dataclasses.replace(user, benign_only=True)
    if ft is not cfg.method.finetune or user is not cfg.data.user:
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, user=user),
                                  method=dataclasses.replace(cfg.method, finetune=ft))
    check_attack(cfg)
    return cfg
