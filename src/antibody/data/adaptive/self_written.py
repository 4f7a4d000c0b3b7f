"""`attack=self_written`: the harmful answers of the poison upload are written by the attacked
(aligned) model itself, its assistant turn prefilled with a compliant start (`attack.prefill`,
"Sure, here is"), so that they are likely under that model and the weighting's response term
log p(y|x) stops flagging them.

What the attacker must hold: the aligned weights (`run.init_from`), or a way to query the
aligned model with a prefilled assistant turn (an API that accepts a partial assistant message)
and read its greedy continuation. The threat model is still the upload: the weights are read,
never changed.

The prompts are the poison upload's harmful prompts, one answer per prompt: the upload's
harmful-row demand is answered by the attacked model instead of its source (`writer_demand`),
with the reserve of spare prompts every model-written demand has, because the same filter as
the base model's harmful answers (`data.harmful_answer_filter`) drops the answers that still
decline or (judge) are not flagged harmful; the builder then answers spares or draws more
prompts from the same pool. A row's answer is the prefill and the continuation; its uid hashes
the prompt (so its refusal view does not depend on the answer), its source is `self_written`.

The continuations are generated once per attacked model and cached like the base model's
(data/sources/generated.py: `<data cache>/generated/self_written-<key>.jsonl`), keyed by the
attacked model's identity (its adapter digest), the generation settings, the prefill and the
prompts; a build that finds them loads no model.
"""

from __future__ import annotations

import dataclasses
import json

from antibody.config.errors import DataError
from antibody.data.adaptive.attacked import AttackedModel
from antibody.data.plan import Demand
from antibody.data.records import Record, make_uid
from antibody.data.sources.generated import cache_key, cache_path, generate_cached, harmful_drops, model_input
from antibody.data.sources.refusals import refusal_for
from antibody.data.sources.registry import SourceContext

SOURCE = "self_written"  # the rows' source tag (not a SourceName: no config may draw on it)


def generation_settings(attacked: AttackedModel, ctx: SourceContext) -> dict:
    """What identifies the continuations in their cache: the attacked model and the decoding."""
    return {**attacked.identity, "prompt_format": ctx.data.prompt_format.value,
            "max_new_tokens": ctx.data.generation_max_new_tokens, "decoding": "greedy"}


class SelfWriter:
    """Answers reserved harmful prompts with the attacked model's prefilled continuations
    (cached), dropping those the harmful-answer filter drops; what it wrote, for the report."""

    def __init__(self, ctx: SourceContext, attacked: AttackedModel, prefill: str, writes: bool):
        self.attacked, self.prefill, self.writes = attacked, prefill, writes
        self.ctx = dataclasses.replace(
            ctx,
            # the only generator here is the attacked model's, and only while the build may write
            generator=self._complete if writes else None,
            generator_settings=generation_settings(attacked, ctx),
        )
        self.caches: list[str] = []
        self.written = self.dropped = 0

    def _complete(self, instructions: list[str]) -> list[str]:
        return self.attacked.complete(instructions, self.prefill)

    def __call__(self, prompts: list[Record], drops: dict) -> list[Record]:
        extra = {"prefill": self.prefill}
        rendered = list(dict.fromkeys(model_input(p) for p in prompts))
        path = cache_path(SOURCE, cache_key(SOURCE, rendered, self.ctx, extra), self.ctx)
        if not self.writes and not path.exists():
            raise DataError(
                f"attack=self_written: the attacked model's answers are not cached ({path}); fill the cache "
                "first with `python -m antibody build-data` and the same overrides, run.init_from included "
                "(SafetyDataModule.prepare_data() does the same)"
            )
        answers, key = generate_cached(SOURCE, prompts, self.ctx, extra=extra)
        if str(path) not in self.caches:
            self.caches.append(str(path))
        texts = [(self.prefill + answers[model_input(p)]).strip() for p in prompts]
        why = harmful_drops([(model_input(p), t) for p, t in zip(prompts, texts, strict=True)], self.ctx)
        rows: list[Record] = []
        for p, text, reason in zip(prompts, texts, why, strict=True):
            if reason is not None:
                drops[reason] = drops.get(reason, 0) + 1
                self.dropped += 1
                continue
            uid = make_uid(SOURCE, p.instruction, p.input)
            rows.append(Record(
                uid=uid, source=SOURCE, instruction=p.instruction, input=p.input, response=text,
                refusal=refusal_for(uid), is_harmful=True, category=p.category,
                meta={"prompt_uid": p.uid, "prompt_source": p.source, "generation_key": key,
                      "prefill": self.prefill, "adaptive": True},
            ))
        self.written += len(rows)
        return rows

    def report(self) -> dict:
        return {
            "built": True,
            "attacked_model": self.attacked.identity,
            "prefill": self.prefill,
            "generation": json.loads(json.dumps(self.ctx.generator_settings)),
            "caches": self.caches,
            "answers_written": self.written,
            "answers_dropped": self.dropped,
        }


def writer_demand(demand: Demand, writer: SelfWriter) -> Demand:
    """The upload's harmful-row demand answered by the attacked model: the same pool and prompt
    order as the poison upload's, one row per prompt, spares reserved."""
    return dataclasses.replace(demand, one_per_prompt=True, answered_by=None, answer_with=writer)
