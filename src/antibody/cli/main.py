"""`python -m antibody <command> key=value ...` — commands keyed by an enum."""

from __future__ import annotations

import sys
from collections.abc import Callable
from enum import StrEnum

from antibody.config import ConfigError, DataError, compose

USAGE = """usage: python -m antibody <command> [group=option] [key=value ...]

commands:
  data-summary   composition of every split for a config
  align          alignment stage (FlatAlignModule) -> runs/<run.name>/
  finetune       fine-tuning stage (WeightedFinetuneModule); run.init_from=<run>|latest
  eval           evaluate a run (run=<path>) or the base model -> metrics.json
  demo           the whole attack-and-defence story on the embedded model
  bench          speed ratios measured side by side
  report         demo results.json -> Markdown table (into README.md)

examples:
  python -m antibody align method=sft run.name=sft-align
  python -m antibody finetune run.init_from=latest method.finetune.weighting=uniform
"""


class Command(StrEnum):
    DATA_SUMMARY = "data-summary"
    ALIGN = "align"
    FINETUNE = "finetune"
    EVAL = "eval"
    DEMO = "demo"
    BENCH = "bench"
    REPORT = "report"


def _data_summary(args: list[str]) -> int:
    from antibody.app.summary import data_summary

    print(data_summary(compose(args)))
    return 0


def _align(args: list[str]) -> int:
    from antibody.app.stages import Stage, train_stage

    run = train_stage(compose(args), Stage.ALIGN)
    print(f"[antibody] alignment finished: {run.path}")
    return 0


def _finetune(args: list[str]) -> int:
    from antibody.app.stages import Stage, train_stage

    cfg = compose(args)
    run = train_stage(cfg, Stage.FINETUNE)
    print(f"[antibody] fine-tuning finished: {run.path}")
    return 0


def _eval(args: list[str]) -> int:
    from antibody.app.evaluate import eval_command

    return eval_command(args)


def _demo(args: list[str]) -> int:
    from antibody.app.demo import demo_command

    return demo_command(args)


def _bench(args: list[str]) -> int:
    from antibody.app.bench import bench_command

    return bench_command(args)


def _report(args: list[str]) -> int:
    from antibody.app.report import report_command

    return report_command(args)


COMMANDS: dict[Command, Callable[[list[str]], int]] = {
    Command.DATA_SUMMARY: _data_summary,
    Command.ALIGN: _align,
    Command.FINETUNE: _finetune,
    Command.EVAL: _eval,
    Command.DEMO: _demo,
    Command.BENCH: _bench,
    Command.REPORT: _report,
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    try:
        command = Command(argv[0])
    except ValueError:
        print(f"error: unknown command {argv[0]!r}\n\n{USAGE}", file=sys.stderr)
        return 2
    try:
        return COMMANDS[command](argv[1:])
    except (ConfigError, DataError) as exc:
        # bad input: one clear line, no traceback (nothing expensive has run yet)
        print(f"error: {exc}", file=sys.stderr)
        return 2
