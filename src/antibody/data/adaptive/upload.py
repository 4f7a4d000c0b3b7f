"""The split builder's hook for the adaptive attacks (config/attack.py): what an adaptive attack
changes in the upload, given the attacked model; nothing for any other attack.

Both adaptive attacks upload the poison upload's rows (same counts, pools and checks), their
harmful answers rewritten: `self_written` has the attacked model answer the harmful prompts
(its demand is answered by `SelfWriter`), `refusal_prefix` prefixes the harmful answers with
the pair chosen on the `attack_held_out` rows (`choose_prefix`). The rows they build carry
meta["adaptive"] = True.

Without an attacked model (the alignment stage, which never reads the upload; an evaluation
whose config names no aligned run) the rows are not rewritten: the upload is the poison rows
they would start from, and the report says so ("built": false). A fine-tuning stream refuses
such an upload (SafetyDataModule.train_stream), so a run never trains on it by mistake.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Optional

from antibody.config.attack import AttackName, attack_spec
from antibody.config.schema import Config
from antibody.data.adaptive.attacked import AttackedModel
from antibody.data.adaptive.refusal_prefix import choose_prefix, prefixed_row
from antibody.data.adaptive.self_written import SelfWriter, writer_demand
from antibody.data.plan import Demand
from antibody.data.records import Record
from antibody.data.sources.registry import SourceContext

NOT_BUILT = ("no attacked model was given (the alignment stage and an evaluation without run.init_from do "
             "not read the upload): these are the poison rows the attack starts from")


class AdaptiveUpload:
    """One per build. `writes`: the attacked model may be loaded to fill missing caches
    (prepare_data); otherwise the caches are only read (setup)."""

    def __init__(self, cfg: Config, attacked: Optional[AttackedModel], context: Callable[[], SourceContext],
                 cache_dir: Path, writes: bool):
        self.cfg, self.attacked, self.cache_dir, self.writes = cfg, attacked, Path(cache_dir), writes
        self.name = cfg.attack.name
        self.adaptive = attack_spec(self.name).adaptive
        self._writer: Optional[SelfWriter] = None
        self._choice: Optional[dict] = None
        if self.adaptive and attacked is not None and self.name is AttackName.SELF_WRITTEN:
            self._writer = SelfWriter(context(), attacked, cfg.attack.prefill, writes)

    @property
    def built(self) -> bool:
        return self.adaptive and self.attacked is not None

    def plan(self, demands: dict[str, Demand]) -> None:
        """self_written: the upload's harmful prompts are answered by the attacked model."""
        if self._writer is not None:
            demands["user_harmful"] = writer_demand(demands["user_harmful"], self._writer)

    def harmful_rows(self, rows: list[Record], held_out: list[Record]) -> list[Record]:
        """refusal_prefix: the upload's harmful rows with the pair chosen on `held_out`."""
        if not self.built or self.name is not AttackName.REFUSAL_PREFIX or not rows:
            return rows
        assert self.attacked is not None
        self._choice = choose_prefix(held_out, self.attacked, self.scoring(), self.cache_dir, self.writes)
        prefix, transition = self._choice["chosen"]["prefix"], self._choice["chosen"]["transition"]
        return [prefixed_row(rec, prefix, transition) for rec in rows]

    def scoring(self) -> dict:
        """What a row's r depends on besides the model and the row (the fine-tuning stage's
        encoding and ratio form; the precision is part of the model's identity)."""
        c = self.cfg
        return {"prompt_format": c.data.prompt_format.value, "max_length": c.data.max_length,
                "ratio_form": c.method.finetune.ratio_form.value}

    def report(self) -> Optional[dict]:
        """What the attack built, for the data summary and the run's adaptive_attack.json; None
        for an attack that is not adaptive."""
        if not self.adaptive:
            return None
        if not self.built:
            return {"built": False, "why": NOT_BUILT}
        if self._writer is not None:
            return self._writer.report()
        return self._choice or {"built": True, "why": "the upload has no harmful rows to prefix"}
