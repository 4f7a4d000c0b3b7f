"""The attacked model of the adaptive attacks (config/attack.py: refusal_prefix, self_written):
the aligned run the fine-tuning starts from (`run.init_from`), as the data layer's
`AttackedModel` (antibody.data.adaptive.attacked).

It is named without loading it (`identity`: the base model, a SHA-256 of the aligned run's
adapter files and of any adapters beneath it, the precision), and loaded on the first
`score` or `complete`, which the data layer calls only for rows it has not cached. Loaded
exactly as the fine-tuning stage loads it (the run's adapter on its base adapters), for
inference, on the device and in the precision an evaluation would use.

`score` is the screen's scoring (methods/scoring.py), which is the fine-tuning stage's own:
`sequence_nll`, `row_logprob` with method.finetune.ratio_form and the `likelihood_ratio`
rule's score (methods/weights.py), on rows encoded as the stage encodes them, so a row's r is
the r the Antibody weighting computes for it.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Optional

from antibody.config import Config, ConfigError
from antibody.config.attack import attack_spec
from antibody.data.records import Record

log = logging.getLogger(__name__)


def folder_digest(folder: Path) -> str:
    """SHA-256 of every file under `folder`: relative paths and contents, in path order."""
    digest = hashlib.sha256()
    files = sorted(p for p in Path(folder).rglob("*") if p.is_file())
    if not files:
        raise ConfigError(f"{folder}: no adapter files to name the aligned model by")
    for path in files:
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()


class AlignedAttackedModel:
    """`AttackedModel` of the aligned run `init_dir` under `cfg` (see the module docstring)."""

    def __init__(self, cfg: Config, init_dir: Path):
        from antibody.app.rundir import read_base_adapters

        self.cfg, self.init_dir = cfg, Path(init_dir)
        self.base_adapters = [str(p) for p in read_base_adapters(self.init_dir)]
        self.identity = {
            "model": cfg.model.name,
            "model_path": cfg.model.path,
            "dtype": cfg.model.dtype,
            "adapter_sha256": folder_digest(self.init_dir / "adapter"),
            "base_adapters_sha256": [folder_digest(Path(p)) for p in self.base_adapters],
            "precision": cfg.trainer.precision,
        }
        self._loaded: Optional[tuple] = None
        self.loads = 0  # how often the model was loaded (tests: only when rows are missing)

    def _model(self) -> tuple:
        if self._loaded is None:
            from antibody.models import load_model
            from antibody.models.placement import inference_device
            from antibody.models.precision import cast_for_inference

            device = inference_device(self.cfg.trainer.accelerator)
            model, tok = load_model(self.cfg.model, adapter_path=self.init_dir / "adapter",
                                    base_adapters=self.base_adapters, device=device, inference=True)
            self._loaded = (cast_for_inference(model.eval(), self.cfg.trainer.precision), tok, device)
            self.loads += 1
        return self._loaded

    def score(self, records: list[Record]) -> list[float]:
        import torch

        from antibody.data.collate import collate_rows, encode_records, pad_token_id_of
        from antibody.methods.scoring import ratio_scores
        from antibody.models.precision import inference_autocast

        model, tok, device = self._model()
        d = self.cfg.data
        # encoded and batched as the fine-tuning stage encodes and batches its rows
        encoded = encode_records(records, tok, d.prompt_format, d.max_length)
        out: list[float] = []
        with inference_autocast(self.cfg.trainer.precision, device):
            for lo in range(0, len(encoded), d.eval_batch_size):
                batch = collate_rows(encoded[lo : lo + d.eval_batch_size], pad_token_id_of(tok))
                batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
                out += ratio_scores(model, batch, self.cfg.method.finetune.ratio_form)["r"].tolist()
        return out

    def complete(self, instructions: list[str], prefill: str) -> list[str]:
        from antibody.data.formatting import format_prompt
        from antibody.data.records import make_uid
        from antibody.evaluation.generation import generate
        from antibody.models.precision import inference_autocast

        model, tok, device = self._model()
        d = self.cfg.data
        # the prompt exactly as training formats it, the assistant's turn already begun
        prompts = [format_prompt(Record(uid=make_uid("prefilled", text), source="prefilled", instruction=text),
                                 tok, d.prompt_format) + prefill for text in instructions]
        with inference_autocast(self.cfg.trainer.precision, device):
            return generate(model, tok, prompts, max_new_tokens=d.generation_max_new_tokens,
                            batch_size=d.generation_batch_size)


def require_aligned_run(cfg: Config) -> None:
    """ConfigError, before any model loads, for an adaptive attack with no run to attack."""
    name = cfg.attack.name
    if attack_spec(name).adaptive and not cfg.run.init_from:
        raise ConfigError(
            f"attack={name.value} is adaptive: it builds its upload under the aligned model the fine-tuning "
            "starts from, but run.init_from is not set; set run.init_from=<alignment run> (a run name, a path "
            "or latest)"
        )


def attacked_model_for(cfg: Config, *, required: bool = True) -> Optional[AlignedAttackedModel]:
    """The attacked model of `cfg`'s adaptive attack (None for any other attack). `required`
    (the fine-tuning stage, data-summary, build-data): a missing run.init_from is a
    ConfigError; otherwise (an evaluation, which reads only the evaluation splits) None
    without one, or where the aligned run cannot be found."""
    from antibody.app.rundir import resolve_init_from

    if not attack_spec(cfg.attack.name).adaptive:
        return None
    if required:
        require_aligned_run(cfg)
        return AlignedAttackedModel(cfg, resolve_init_from(cfg.run.init_from, cfg.run.output_dir))
    if not cfg.run.init_from:
        return None
    try:
        return AlignedAttackedModel(cfg, resolve_init_from(cfg.run.init_from, cfg.run.output_dir))
    except ConfigError as exc:  # the aligned run is gone: the evaluation splits do not need it
        log.warning("attack=%s: %s; the upload is built without its adaptive rows", cfg.attack.name.value, exc)
        return None
