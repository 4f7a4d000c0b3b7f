"""SafeInstr's upload (method.finetune.method=safeinstr): the user's rows plus a share of the
provider's safety demonstrations (added on top, or in place of as many benign rows:
method.finetune.safeinstr.mix), and the check of that share against the alignment split.
Used by the split builder for the research upload and for a provider's own upload."""

from __future__ import annotations

import dataclasses
import logging
import math

import numpy as np

from antibody.config.baselines import SafeInstrMix
from antibody.config.errors import DataError
from antibody.config.schema import Config, FinetuneMethod, finetune_method
from antibody.data.records import Record, make_uid

log = logging.getLogger(__name__)

# SafeInstr's own seed stream (ours): any constant distinct from the StreamKind values
_SAFEINSTR_SEED_KEY = 0x5AFE


def check_safeinstr_count(cfg: Config, available: int, count: int, rows: int, what: str, benign: int) -> None:
    """SafeInstr's demonstration count (floor(share * rows), rows = `what`: data.user.n, or an
    upload's row count) against the alignment split's `available` harmful-prompt -> refusal
    rows and, when the demonstrations replace benign rows, against the upload's `benign`
    rows, before anything is built."""
    f = cfg.method.finetune
    key = f"method.finetune.safeinstr.share={f.safeinstr.share}"
    if finetune_method(f) is FinetuneMethod.SAFEINSTR and count == 0:
        # small pipeline checks (tiny, demo_quick) must still run, but the run is then
        # plain SFT on a reshuffled upload, and the log must say so
        least = math.ceil(10_000 / rows) / 10_000
        msg = "%s: floor(share * %s=%d) = 0 demonstrations, so this SafeInstr run is SFT"
        log.warning(msg + " (share >= %s gives one)", key, what, rows, least)
    if count > available:
        largest = math.floor(10_000 * available / rows) / 10_000
        raise DataError(
            f"{key}: SafeInstr mixes floor(share * {what}={rows}) = {count} safety "
            "demonstrations into the upload, taken from the alignment split's harmful-prompt -> "
            f"refusal rows, but it has only {available} (data.alignment.n_harmful); lower "
            f"the share to at most {largest} or raise data.alignment.n_harmful"
        )
    if finetune_method(f) is FinetuneMethod.SAFEINSTR and f.safeinstr.mix is SafeInstrMix.REPLACE and count > benign:
        raise DataError(
            f"{key}, method.finetune.safeinstr.mix=replace: {count} safety demonstrations would "
            f"replace benign rows, but {what}={rows} has only {benign} benign rows; lower the share "
            "or mix them in with method.finetune.safeinstr.mix=add"
        )


def safeinstr_upload(user: list[Record], refusals: list[Record], count: int, seed: int,
                     mix: SafeInstrMix = SafeInstrMix.ADD, tags_known: bool = True) -> list[Record]:
    """SafeInstr's mixed upload: the user's rows plus `count` of the provider's safety
    demonstrations, shuffled together (seeded by data.seed). Under ``mix=replace`` the
    demonstrations take the place of `count` of the user's rows (drawn by the same seed), so
    the upload keeps its size: benign rows only when the harmful tags are the experiment's
    own (`tags_known`), which keeps every harmful row as Lisa's repository mixes; any rows
    of a provider's upload, whose tags are for analysis only and never steer training.

    The demonstrations are alignment-split rows: a harmful prompt the provider aligned on,
    answered with its refusal. They are tagged ``is_harmful=False`` and source
    ``safeinstr`` (they teach safe behaviour), so the harmful-row statistics stay about the
    user's harmful rows; ``meta`` keeps the original uid and prompt source. The builder
    checks ``count`` against the refusal rows before anything is built.
    """
    rng = np.random.default_rng(np.random.SeedSequence([seed & 0xFFFFFFFFFFFFFFFF, _SAFEINSTR_SEED_KEY]))
    picked = [refusals[i] for i in rng.permutation(len(refusals))[:count].tolist()]
    meta = [{**r.meta, "from_uid": r.uid, "prompt_source": r.source} for r in picked]
    demos = [
        dataclasses.replace(r, uid=make_uid("safeinstr", r.uid), source="safeinstr", is_harmful=False, meta=m)
        for r, m in zip(picked, meta, strict=True)
    ]
    kept = list(user)
    if mix is SafeInstrMix.REPLACE:
        pool = [i for i, r in enumerate(user) if not (tags_known and r.is_harmful)]
        dropped = {pool[i] for i in rng.permutation(len(pool))[:count].tolist()}
        kept = [r for i, r in enumerate(user) if i not in dropped]
    mixed = kept + demos
    rng.shuffle(mixed)  # type: ignore[arg-type]
    return mixed
