"""`eval`: evaluate a run (its adapter) or the un-aligned base model -> metrics.json.

    python -m antibody eval run=runs/<name> [eval.max_new_tokens=64 ...]
    python -m antibody eval [config overrides]        # the base model, no adapter
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from antibody.app.arguments import pop_arg
from antibody.config import Config, ConfigError, compose
from antibody.config.compose import apply_overrides, load_saved


def eval_records(cfg: Config, tokenizer) -> dict:
    """Evaluation records keyed by evaluation task name: each task of the registry that
    applies to the config reads the DataModule split it declares."""
    from antibody.app.stages import build_datamodule
    from antibody.config.schema import Stage
    from antibody.evaluation.tasks import tasks_for

    dm = build_datamodule(cfg, tokenizer, Stage.FINETUNE)
    return {task.name.value: dm.records(task.split) for task in tasks_for(cfg)}


def evaluate_model(cfg: Config, adapter: Optional[Path], out_dir: Path, records=None, progress=None,
                   base_adapters: tuple = ()) -> dict:
    """Load the model (+ adapter), judge, and evaluate every task into `out_dir`."""
    from antibody.evaluation.evaluator import evaluate
    from antibody.evaluation.judges import build_judge
    from antibody.models import cache_root, load_model, load_tokenizer

    tokenizer = load_tokenizer(cfg.model)
    if records is None:
        records = eval_records(cfg, tokenizer)
    judge = build_judge(cfg.eval.judge, cfg, cache_root())
    model, tokenizer = load_model(
        cfg.model, with_lora=adapter is not None, adapter_path=adapter, base_adapters=base_adapters
    )
    model.eval()
    return evaluate(model, tokenizer, records, cfg, out_dir, judge, progress=progress)


def eval_command(args: list[str]) -> int:
    value, rest = pop_arg(args, "run")
    run = Path(value) if value is not None else None
    if run is None:
        cfg = compose(rest)
        out_dir = Path(cfg.run.output_dir) / f"base-{cfg.model.name}" / "eval"
        adapter = None
    else:
        if not (run / "config.yaml").is_file() or not (run / "adapter").is_dir():
            raise ConfigError(f"run={run}: not a finished run (needs config.yaml and adapter/)")
        cfg = apply_overrides(load_saved(run / "config.yaml"), rest)
        out_dir = run / "eval"
        adapter = run / "adapter"
    from antibody.app.stages import read_base_adapters

    base = tuple(read_base_adapters(run)) if run is not None else ()
    result = evaluate_model(cfg, adapter, out_dir, base_adapters=base)
    print(f"[antibody] wrote {out_dir / 'metrics.json'}")
    for key, value in result["metrics"].items():
        print(f"  {key:32s} {value.get('value', value)}")
    return 0
