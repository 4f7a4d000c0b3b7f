"""`python -m antibody <command> [key=value ...]`: argument parsing only.

Each command is a member of `Command`, keyed in `COMMANDS` to its help text and to the
`antibody.app` function that does the work (imported when the command runs). `key=value` / `group=option` overrides are
passed through as positional arguments to the config composition, unchanged.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import os
import sys
import textwrap
from dataclasses import dataclass
from enum import StrEnum

from antibody.app.errors import EXIT_INTERRUPTED, EXIT_USER_ERROR, StageInterrupted, user_error_types
from antibody.app.logs import configure_logging

PROG = "python -m antibody"

OVERRIDES_HELP = (
    "config overrides: group=option picks conf/<group>/<option>.yaml (groups: model, data, "
    "task, method, trainer, logger, attack, experiment), key=value sets one key (e.g. method.align.rho=0.3)"
)


class Command(StrEnum):
    DATA_SUMMARY = "data-summary"
    BUILD_DATA = "build-data"
    ALIGN = "align"
    FINETUNE = "finetune"
    REPAIR = "repair"
    EVAL = "eval"
    JUDGE_EVAL = "judge-eval"
    DEMO = "demo"
    BENCH = "bench"
    REPORT = "report"
    STUDY = "study"
    TRIAL = "trial"
    SCREEN = "screen"
    MERGE_CHECK = "merge-check"


@dataclass(frozen=True)
class Spec:
    """What `--help` says about a command, its arguments, and the handler that runs it."""

    summary: str  # its line in `python -m antibody --help`
    description: str  # the head of its own `--help`
    examples: tuple[str, ...]
    # "module:function" of antibody.app, called with the command's arguments. Imported on
    # call: `--help` and config errors must not wait for torch and Lightning to load.
    target: str
    overrides_metavar: str = "key=value"
    overrides_help: str = OVERRIDES_HELP
    report_args: bool = False  # `report` takes file paths, not overrides
    raw_args: bool = False  # the command parses its own arguments (`study`)


COMMANDS: dict[Command, Spec] = {
    Command.DATA_SUMMARY: Spec(
        "composition of every split for a config",
        "Build every data split of the composed config and print its composition: rows, "
        "harmful/benign counts, lengths, truncation and where the rows came from.",
        ("data-summary", "data-summary experiment=demo data.user.p=0.1"),
        "antibody.app.summary:data_summary_command",
    ),
    Command.BUILD_DATA: Spec(
        "fill the model-written data cache (the base model answers prompts once)",
        "Have the unaligned base model write the answers of every model-written data source "
        "the composed config uses, cache them (under $ANTIBODY_CACHE/data, default "
        "~/.cache/antibody/data) for every later command with the same generation settings, "
        "and print the split summary as data-summary does.",
        ("build-data", "build-data experiment=demo"),
        "antibody.app.build_data:build_data_command",
    ),
    Command.ALIGN: Spec(
        "alignment stage (FlatAlignModule) -> runs/<run.name>/",
        "Train the alignment stage on the composed config and save the adapter, metrics and "
        "data summary under <run.output_dir>/<run.name>/; an unfinished run of the same "
        "config resumes from its last checkpoint.",
        ("align method=sft run.name=sft-align", "align experiment=tiny run.name=smoke"),
        "antibody.app.train:align_command",
    ),
    Command.FINETUNE: Spec(
        "fine-tuning stage (WeightedFinetuneModule); run.init_from=<run>|latest",
        "Fine-tune on the user's (poisoned) upload, starting from an aligned run's adapter "
        "(run.init_from=<run name or path>, or latest: the newest finished align run).",
        ("finetune run.init_from=latest method.finetune.weighting=uniform",
         "finetune run.init_from=sft-align run.name=sft-ft"),
        "antibody.app.train:finetune_command",
    ),
    Command.REPAIR: Spec(
        "post-fine-tuning stage (e.g. Antidote's pruning); run.init_from=<fine-tuning run>|latest",
        "Repair a finished fine-tuning run without training it (method.repair.method=antidote: zero "
        "the adapter weights most important on the defender's harmful rows) and save the repaired "
        "adapter, metrics and config under <run.output_dir>/<run.name>/, evaluated like any run.",
        ("repair run.init_from=sft-ft method.repair.method=antidote run.name=sft-ft-antidote",
         "repair run.init_from=latest method.repair.method=antidote method.repair.antidote.dense_ratio=0.2"),
        "antibody.app.train:repair_command",
    ),
    Command.EVAL: Spec(
        "evaluate a run (run=<path>) or the base model -> metrics.json",
        "Evaluate a finished run's adapter (run=<path>: config.yaml and adapter/ are read "
        "from it, metrics go to <path>/eval/) or, without run=, the base model of the composed "
        "config (metrics go to <run.output_dir>/base-<model.name>/eval/). Predictions are "
        "written per prompt, so an interrupted evaluation resumes.",
        ("eval run=runs/sft-align", "eval run=runs/sft-align eval.max_new_tokens=64",
         "eval experiment=tiny        # the base model, no adapter"),
        "antibody.app.evaluate:eval_command",
        overrides_metavar="run=<path>|key=value",
        overrides_help="run=<path>: the run directory to evaluate (omit it for the base model); "
                       "the rest are " + OVERRIDES_HELP,
    ),
    Command.JUDGE_EVAL: Spec(
        "measure every harm judge on the human-labelled validation part",
        "Score the validation part of the judges' labelled data (PyRIT's human labels and "
        "UncensorBench, split by prompt, disjoint from every pool) with each judge, alone and "
        "behind the refusal gate: AUROC, sensitivity, specificity, precision and accuracy with "
        "intervals, overall and per source, at the evaluation's answer length; also the "
        "incoherence signal and the refusal detector. Writes <run.output_dir>/judge-eval/ "
        "judge_eval.json and table.md (experiment=demo unless another experiment is named).",
        ("judge-eval", "judge-eval judges=keyword,tfidf answer_tokens=full",
         "judge-eval judges=beaver-dam eval.judge_path=/models/beaver-dam-7b   # on a GPU"),
        "antibody.app.judge.evaluation:judge_eval_command",
        overrides_metavar="judges=a,b|answer_tokens=N|full|key=value",
        overrides_help="judges=keyword,tfidf,probe (default; beaver-dam on a GPU), answer_tokens=N "
                       "(default eval.max_new_tokens) or full; the rest are " + OVERRIDES_HELP,
    ),
    Command.DEMO: Spec(
        "the whole attack-and-defence story on the embedded model",
        "Evaluate the base model, align with SFT and Antibody, fine-tune each on the same "
        "poisoned upload (plus a benign-only control), evaluate every model, and write "
        "results.json, a table and a bar chart. Finished jobs are reused, so an interrupted "
        "demo resumes. suite=controls runs the weighting-term controls instead, suite=baselines "
        "the paper's baselines (Booster, Vaccine, RepNoise, Lisa, SafeInstr).",
        ("demo", "demo experiment=demo_quick", "demo suite=controls", "demo suite=baselines"),
        "antibody.app.demo.run:demo_command",
        overrides_metavar="suite=main|controls|baselines|key=value",
        overrides_help="suite=main (default), controls or baselines; the rest are " + OVERRIDES_HELP
                       + " (experiment=demo unless another experiment is named)",
    ),
    Command.BENCH: Spec(
        "cost of every method: time and memory ratios to SFT, measured side by side",
        "Median seconds per optimizer step and peak memory of every method of each stage, "
        "as ratios to SFT of the same stage: rounds interleave the methods (rotated order) "
        "from the same weights on the same batches, and each method's peak memory is "
        "measured in a fresh process; writes <run.output_dir>/bench/bench.json.",
        ("bench", "bench experiment=tiny", "bench methods=sft,booster repeats=5",
         "bench methods=sft,antibody precisions=32-true,bf16-mixed memory=false"),
        "antibody.app.bench.run:bench_command",
        overrides_metavar="steps=N|warmup=N|repeats=N|methods=a,b|memory=true|false|precisions=a,b|key=value",
        overrides_help="steps=N timed steps per method per round (default 3), warmup=N untimed "
                       "steps first (1), repeats=N rounds (3), methods=a,b,... (default all; sft "
                       "always runs), memory=false skips the memory pass, precisions=32-true,bf16-mixed "
                       "times every method in each precision side by side (default: the config's); "
                       "the rest are " + OVERRIDES_HELP,
    ),
    Command.REPORT: Spec(
        "a results file (demo, study, bench, judge-eval, merge-check) -> its page under docs/results/",
        "Render a results.json (or bench.json, judge_eval.json, merge_check.json) as Markdown and "
        "replace the block between its markers on its results page (docs/results/<name>.md, created "
        "when missing); with a page path, that page's block instead; with -, print it only.",
        ("report runs/demo/results.json", "report runs/bench/bench.json docs/calibration.md",
         "report runs/demo/results.json -"),
        "antibody.app.report:report_command",
        report_args=True,
    ),
    Command.STUDY: Spec(
        "a study file: method rows x axes x seeds, aligned, fine-tuned, evaluated -> runs/<name>/",
        "Run every cell of a study file (conf/study/<name>.yaml): alignment jobs shared between "
        "cells with the same alignment config (keyed by its hash), fine-tuning jobs, one "
        "evaluation per model; finished jobs are reused and killed ones resume. Writes "
        "runs/<name>/results.json and table.md (mean ± std over seeds, paired differences to the "
        "reference row). --dry-run lists the jobs, their state and estimated time; --only "
        "runs a subset (row=..., seed=..., an axis by its full or last name).",
        ("study conf/study/tiny.yaml --dry-run", "study conf/study/tiny.yaml --only row=sft,seed=1"),
        "antibody.app.study.run:study_command",
        raw_args=True,
    ),
    Command.TRIAL: Spec(
        "one study cell from overrides (a W&B sweep agent's command): align, fine-tune, evaluate, log",
        "Align (reusing a finished alignment with the same alignment config), fine-tune and "
        "evaluate the composed config in a run dir named by the hash of its config "
        "(<run.output_dir>/trials/), then report HS, HS+, HS corrected, refusal, over-refusal, FA, "
        "weight shares and detector AUROCs: printed, in trial_summary.json, and as W&B summary "
        "metrics with logger=wandb (plus the harmful predictions as a table).",
        ("trial experiment=tiny data.user.p=0.1", "trial method=antibody data.user.p=0.2 logger=wandb"),
        "antibody.app.study.trial:trial_command",
    ),
    Command.SCREEN: Spec(
        "score an upload under an aligned model: r, expected weights -> screen.jsonl/md/png",
        "Check a provider's upload (JSONL, JSON, CSV, Parquet or a hub id; docs/providers.md) and "
        "score every row under an aligned run, without gradient: log p(y|x), log p(y_r|x), r and the "
        "expected weight softmax(r / tau) in a batch of data.finetune_batch_size rows. Writes "
        "screen.jsonl (one line per row, in upload order), screen.json, screen.md and screen.png to "
        "out= (default <run.output_dir>/screen-<upload>-<run>); a killed screen resumes. With an "
        "is_harmful column the report adds each term's AUROC and the harmful rows' weight share.",
        ("screen upload.jsonl run=runs/demo/align-antibody",
         "screen upload.csv run=runs/demo/align-sft data.user.fields.prompt=instruction out=runs/screen-x",
         "screen upload.jsonl run=runs/demo/align-antibody into=docs/providers.md block=screen-antibody"),
        "antibody.app.screen.run:screen_command",
        overrides_metavar="<upload> run=<aligned run>|out=<dir>|draws=N|seed=N|batch=N|into=<file>|block=<name>|key=value",
        overrides_help="<upload>: the file or hub id; run=<path>: the aligned run; out=<dir>; draws=N "
                       "permutations for sampled expected weights (default 1000); seed=N (default "
                       "data.seed); batch=N rows per scoring batch (default data.eval_batch_size); "
                       "into=<file> block=<name>: replace that marked block of a Markdown file with the "
                       "report; the rest are key=value overrides of the run's saved config",
    ),
    Command.MERGE_CHECK: Spec(
        "what merging a run's adapter into its base changes (logits, answers, refusals)",
        "Load a finished run's adapter on the base its config names (override model.quantization "
        "or model.dtype to try another base) and compare the model unmerged (the adapter beside "
        "the base weights) with the adapter merged into them, on the first n harmful evaluation "
        "prompts: the change of the first answer token's logits against the adapter's own effect, "
        "their KL divergence and top-1 agreement, greedy answers changed, keyword refusals. Adds "
        "a row per base to <run>/merge_check.json (docs/gpu.md).",
        ("merge-check run=runs/demo/align-sft",
         "merge-check run=runs/nf4-align model.quantization=nf4 n=32"),
        "antibody.app.merge_check:merge_check_command",
        overrides_metavar="run=<run>|n=N|key=value",
        overrides_help="run=<run>: the finished run whose adapter is merged; n=N prompts (default 32); "
                       "the rest are key=value overrides of the run's saved config",
    ),
}


# Descriptions are wrapped here, epilogs (examples, one per line) are printed as written.
_Formatter = functools.partial(argparse.RawDescriptionHelpFormatter, max_help_position=32)


def _wrap(text: str) -> str:
    return textwrap.fill(text, width=88)


def build_parser() -> argparse.ArgumentParser:
    # the command list is written here rather than by argparse, which wraps long names
    commands = "commands:\n" + "\n".join(f"  {c.value:<14}{spec.summary}" for c, spec in COMMANDS.items())
    examples = "examples:\n" + "\n".join(
        f"  {PROG} {line}" for line in ("align method=sft run.name=sft-align",
                                        "finetune run.init_from=latest method.finetune.weighting=uniform",
                                        "eval run=runs/sft-align", "eval --help"))
    parser = argparse.ArgumentParser(
        prog=PROG,
        usage=f"{PROG} <command> [key=value ...]",
        description=_wrap("Defences against harmful fine-tuning of LLMs: build data, align, fine-tune, "
                          "evaluate. Every command takes config overrides as key=value; "
                          f"`{PROG} <command> --help` describes one command."),
        epilog=f"{commands}\n\n{examples}",
        formatter_class=_Formatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="<command>", help=argparse.SUPPRESS, required=True)
    for command, spec in COMMANDS.items():
        p = sub.add_parser(
            command.value,
            prog=f"{PROG} {command.value}",
            description=_wrap(spec.description),
            epilog="examples:\n" + "\n".join(f"  {PROG} {e}" for e in spec.examples),
            formatter_class=_Formatter,
        )
        if spec.raw_args:
            p.add_argument("args", metavar="<file.yaml> [--dry-run | --report] [--only key=value,...]",
                           nargs=argparse.REMAINDER, help="the study file and its options")
        elif spec.report_args:
            p.add_argument("results", metavar="results.json", help="a results file a command wrote")
            p.add_argument("page", metavar="PAGE | -", nargs="?", default=None,
                           help="update the block in this page instead of the results page; - prints")
        else:
            p.add_argument("overrides", metavar=spec.overrides_metavar, nargs="*", help=spec.overrides_help)
    return parser


def _run(spec: Spec, ns: argparse.Namespace) -> int:
    module, function = spec.target.split(":")
    if spec.raw_args:
        return getattr(importlib.import_module(module), function)(list(ns.args))
    args = [ns.results, *([ns.page] if ns.page else [])] if spec.report_args else ns.overrides
    return getattr(importlib.import_module(module), function)(args)


def _exit_code(exc: SystemExit) -> int:
    code = exc.code
    return code if isinstance(code, int) else (0 if code is None else EXIT_USER_ERROR)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv or argv == ["help"]:
        parser.print_help()
        return 0
    if argv[0] == "help":  # `help eval` == `eval --help`
        argv = [*argv[1:], "--help"]
    try:
        ns = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2): argparse has printed it
        return _exit_code(exc)
    configure_logging()
    try:
        return _run(COMMANDS[Command(ns.command)], ns)
    except user_error_types() as exc:
        # bad input: one clear line, no traceback (checks run before expensive work); a
        # library message quoted inside may span lines
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return EXIT_USER_ERROR
    except (KeyboardInterrupt, StageInterrupted) as exc:
        print(f"error: interrupted{f': {exc}' if str(exc) else ''}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # the reader went away (`... | head`): not an error to report; stdout goes to
        # /dev/null so that flushing it at exit does not raise again (Python's signal docs)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
