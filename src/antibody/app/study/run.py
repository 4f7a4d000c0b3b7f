"""`study`: one YAML file, one command: every cell aligned, fine-tuned and evaluated.

    python -m antibody study conf/study/<name>.yaml [--dry-run | --report] [--only row=x,p=0.2]

Cells run one after another, each to its evaluation; a finished job (DONE) is never redone,
a killed one resumes from its last checkpoint (train_stage), an evaluation already
current is kept (app/evaluate.is_current). The judge and its validation are built once
per invocation. `--dry-run` lists the jobs with their state and an estimated time from
measured step costs. Outputs: runs/<study>/results.json (every cell and seed) and
runs/<study>/table.md (study.report); a demo study file (`suite`) writes one line per model
instead (study.models), and `python -m antibody demo` runs those files.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Optional

from antibody.app.memory import release_memory
from antibody.app.rundir import RunDir, write_results
from antibody.app.study.clock import CellClock
from antibody.app.study.plan import Cell, Job, job_config, jobs_of, parse_only, plan, selected, stage_method
from antibody.app.study.results import PlannedJob, StudyResults
from antibody.app.study.suite import SuiteResults
from antibody.config import Config, ConfigError, compose
from antibody.config.schema import (
    DataConfig,
    EvalConfig,
    MethodConfig,
    RunConfig,
    Stage,
    TaskConfig,
    TrainerConfig,
)
from antibody.config.study import StudyConfig, load_study
from antibody.infra import progress


def _state(run: RunDir, job: Job, cfg: Config) -> str:
    if run.done:
        return "done" if _same_config(job, run, cfg) else "config differs"
    return "resumable" if run.last_checkpoint.exists() else "todo"


def _same_config(job: Job, run: RunDir, cfg: Config) -> bool:
    """A finished run under a row's explicit name is the job only if it trained this config
    (a hash-keyed run dir is named by its config already)."""
    from antibody.app.rundir import config_matches

    return job.run_name is None or config_matches(run.config_path, cfg)


def _steps(cfg: Config, stage: Stage) -> int:
    """Optimizer steps of a job (a repair trains nothing: 0)."""
    return {Stage.ALIGN: cfg.method.align.max_steps, Stage.FINETUNE: cfg.method.finetune.max_steps}.get(stage, 0)


def measured_eval_seconds(root: Path, model_name: str) -> float | None:
    """Median wall time of the evaluations of `model_name` beside `root` (this study's and
    its siblings', e.g. the demo's) that generated every answer."""
    import statistics

    seconds = []
    for path in [*root.parent.glob("*/eval/metrics.json"), *root.parent.glob("*/*/eval/metrics.json")]:
        data = json.loads(path.read_text())
        tasks = data.get("tasks", {}).values()
        if (data.get("model", {}).get("name") == model_name and data.get("eval_seconds") and tasks
                and all(t.get("generated_this_run") == t.get("n") for t in tasks)):
            seconds.append(float(data["eval_seconds"]))
    return statistics.median(seconds) if seconds else None


def cost_key(cfg: Config, stage: Stage) -> tuple:
    """What a step's cost depends on: stage, method, model (its quantisation too: an nf4 SFT
    step of the embedded model took 12.98 s on the CPU against about 3.5 s in fp32), device
    and precision (bf16-mixed: 0.68-0.77x the fp32 step, docs/calibration.md) and training's attention
    kernel (eager under bf16: 0.50-0.61x the fp32 step), sequence length
    and batch sizes, and the method settings that change the passes a step makes (RepNoise's
    logit lens: `make bench` measured 9.82x an SFT step with it, 2.45x without)."""
    from antibody.config.schema import AlignMethod

    d = cfg.data
    batch = (d.align_batch_size, d.harmful_batch_size) if stage is Stage.ALIGN else (d.finetune_batch_size,)
    passes = None
    if stage is Stage.ALIGN and cfg.method.align.method is AlignMethod.REPNOISE:
        passes = ("logit_lens", cfg.method.align.repnoise.logit_lens)
    return (stage.value, stage_method(cfg, stage), cfg.model.name, cfg.model.quantization.value, cfg.model.dtype,
            cfg.trainer.accelerator, cfg.trainer.precision, cfg.trainer.attention, d.max_length, *batch, passes)


def measured_step_costs(root: Path) -> dict[tuple, float]:
    """cost_key -> median seconds per step over the finished runs under `root`'s parent (this
    study's jobs and any other run dir beside it, e.g. the demo's), matched on what the cost
    depends on."""
    import statistics

    from antibody.config import load_saved

    seen: dict[tuple, list[float]] = {}
    for metrics in [*root.parent.glob("*/metrics.json"), *root.parent.glob("*/*/metrics.json")]:
        cfg_path, stage_file = metrics.parent / "config.yaml", metrics.parent / "stage"
        if not (cfg_path.is_file() and stage_file.is_file()):
            continue
        sps = json.loads(metrics.read_text()).get("seconds_per_step")
        try:
            stage = Stage(stage_file.read_text().strip())
            key = cost_key(load_saved(cfg_path), stage)
        except (ValueError, ConfigError):
            continue  # a run written by an older schema: its cost is not comparable
        if sps:
            seen.setdefault(key, []).append(float(sps))
    return {k: statistics.median(v) for k, v in seen.items()}


def dry_run(jobs: list[Job], root: Path, costs: dict) -> list[PlannedJob]:
    out = []
    for job in jobs:
        cfg = job_config(job)
        run = RunDir(root / job.name)
        state = _state(run, job, cfg)
        steps = _steps(cfg, job.stage)
        sps = costs.get(cost_key(cfg, job.stage))
        left = 0 if state == "done" else steps
        out.append(PlannedJob(job.name, job.stage.value, stage_method(cfg, job.stage), state, steps, sps,
                              None if sps is None else left * sps))
    return out


def _counted_cost(cells: list[Cell], rows: list[PlannedJob], root: Path, gpu) -> str:
    """GPU-hours of the cells from counted FLOPs (app/study/cost.py), on --gpu (default h100)."""
    from antibody.app.study.cost import Accelerator, estimate, estimate_text

    done = {r.job for r in rows if r.state == "done"}
    train = [(job_config(j), j.stage, j.name in done) for j in jobs_of(cells)]
    models = {c.model_job.name: c.model_job for c in cells}
    evals = [(job_config(j), (root / name / "eval" / "metrics.json").is_file()) for name, j in models.items()]
    return estimate_text(estimate(train, evals, gpu or Accelerator.H100))


def train_job(job: Job, cache: Optional[dict] = None) -> bool:
    """Train the job unless its run is done (True if it trained now). On an accelerator the
    evaluation tools in `cache` are dropped first, and only when it trains: a finished job
    costs the next evaluation no rebuild."""
    from antibody.app.train import run_stage

    cfg = job_config(job)
    run = RunDir(Path(cfg.run.output_dir) / cfg.run.name)
    if run.done:
        if not _same_config(job, run, cfg):
            raise ConfigError(f"{run.path} was trained with a different config than the row's job {job.name} asks for; "
                              "rename the row's run dir (nothing was overwritten)")
        return False
    if cache is not None and cfg.trainer.accelerator != "cpu":
        evict_tools(cache)  # the judge leaves the accelerator to the training job
    run_stage(cfg, job.stage)
    return True


def evaluate_job(job: Job, cache: dict) -> bool:
    """Evaluate the job's model unless its evaluation is current; True if it ran now.

    `cache` keeps what jobs of one invocation share: the judge, its validation and the
    incoherence signal per (evaluation settings, model), and the evaluation records per
    (data, task, model), so a study builds each once rather than once per job.
    """
    from antibody.app.evaluate import eval_records, evaluate_model, instrument, is_current
    from antibody.app.stages import read_base_adapters
    from antibody.config import to_yaml
    from antibody.models import load_tokenizer

    cfg = job_config(job)
    run_dir = Path(cfg.run.output_dir) / cfg.run.name
    tools_key = ("tools", to_yaml(dataclasses.replace(cfg, run=RunConfig(), method=MethodConfig(), data=DataConfig(),
                                                      task=TaskConfig(), trainer=TrainerConfig())))
    if tools_key not in cache:
        cache[tools_key] = instrument(cfg, load_tokenizer(cfg.model))
    tools = cache[tools_key]
    if is_current(run_dir / "eval" / "metrics.json", tools):
        return False
    records_key = ("records", cfg.model.name, to_yaml(dataclasses.replace(
        cfg, run=RunConfig(), method=MethodConfig(), eval=EvalConfig(), trainer=TrainerConfig())))
    if records_key not in cache:
        cache[records_key] = eval_records(cfg, load_tokenizer(cfg.model))
    adapter = None if job.stage is None else run_dir / "adapter"  # a base-model row: no adapter
    evaluate_model(cfg, adapter, run_dir / "eval", records=cache[records_key],
                   base_adapters=tuple(read_base_adapters(run_dir)), tools=tools)
    return True


def probe_job(job: Job, cache: dict) -> None:
    """The sharpness probe of an aligned model, once (sharpness.json)."""
    from antibody.app.rundir import write_json
    from antibody.app.study.models import probe

    cfg = job_config(job)
    run_dir = Path(cfg.run.output_dir) / cfg.run.name
    if not (run_dir / "sharpness.json").is_file():
        write_json(run_dir / "sharpness.json", probe(cfg, run_dir, cache))


def evict_tools(cache: dict) -> None:
    """Drop the evaluation tools (the judge, the loss signal) from a study's cache: the next
    evaluation builds them again (from their on-disk caches), the training job in between
    gets their memory. The evaluation records stay (small, and built from the data)."""
    for key in [k for k in cache if k[0] == "tools"]:
        del cache[key]
    release_memory()


def run_study(study: StudyConfig, root: Path, cells: list[Cell], all_cells: list[Cell]) -> StudyResults | SuiteResults:
    """Run `cells` (a filter's subset of `all_cells`) one after another, each to the end
    (align, fine-tune, evaluate) before the next starts, so that a run stopped by the end of
    a session leaves finished rows rather than many half-used alignments; results.json and
    table.md are rewritten after each evaluation. The results cover every cell of the study,
    those without an evaluation yet marked pending."""
    jobs = jobs_of(cells)
    t0 = time.perf_counter()
    counts = {"trained": 0, "evaluated": 0}
    cache: dict = {}  # the judge and evaluation records, shared by the jobs of this invocation
    done: set[str] = set()
    results: StudyResults | SuiteResults | None = None
    models = {c.model_job.name for c in cells}
    planned = dry_run(jobs, root, measured_step_costs(root))
    clock = CellClock(study.name, root, cells, {p.job: 0.0 if p.state == "done" else p.estimated_seconds for p in planned},
                      measured_eval_seconds(root, job_config(cells[0].model_job).model.name) if cells else None)
    with progress.task(f"study {study.name}", total=len(jobs) + len(models)) as bar:
        for k, cell in enumerate(cells):
            clock.start(k)
            for job in (cell.align, cell.finetune, cell.repair):
                if job is None or job.name in done:
                    continue
                bar.update(description=f"train {job.name}")
                counts["trained"] += train_job(job, cache)
                release_memory()
                done.add(job.name)
                bar.advance()
            model = cell.model_job
            if f"eval:{model.name}" in done:
                continue
            bar.update(description=f"eval {model.name}")
            counts["evaluated"] += evaluate_job(model, cache)
            release_memory()
            if study.probe_aligned and model.stage is Stage.ALIGN:
                probe_job(model, cache)
            done.add(f"eval:{model.name}")
            bar.advance()
            clock.done(k)
            results = collect(study, root, all_cells, len(jobs), counts, time.perf_counter() - t0)
            write_study(root, results, final=False)
    if results is None:  # nothing evaluated in this invocation
        results = collect(study, root, all_cells, len(jobs), counts, time.perf_counter() - t0)
    return results


def collect(study: StudyConfig, root: Path, all_cells: list[Cell], n_jobs: int, counts: dict,
            seconds: float) -> StudyResults | SuiteResults:
    """The study's results from the runs on disk (a demo suite's: study.models' records)."""
    from antibody.app.study.models import model_results, named_comparisons
    from antibody.app.study.report import cell_result, compute, named_over_seeds, summarise

    if study.suite is not None:
        return model_results(study, root, all_cells, counts, seconds)
    results = StudyResults(study.name, study.reference, list(study.axes), list(study.seeds),
                           [cell_result(c, root) for c in all_cells], jobs=n_jobs,
                           seconds_this_invocation=seconds, jobs_trained_this_invocation=counts["trained"],
                           jobs_evaluated_this_invocation=counts["evaluated"])
    summarise(results, root)
    results.compute = compute(results, root)
    if study.comparisons:
        results.named_comparisons = named_comparisons(study, all_cells, root)
        results.named_paired = named_over_seeds(results.named_comparisons, results.axes)
    if study.paper is not None:
        from antibody.app.study.paper import paper_comparison

        results.paper = paper_comparison(results, dataclasses.asdict(study.paper))
    from antibody.app.study.stress import stress_summary

    stress = stress_summary(results, study.utility_margin / 100)  # None without an `attack` axis
    results.stress = None if stress is None else stress.to_json()
    return results


def write_study(root: Path, results: StudyResults | SuiteResults, final: bool = True) -> None:
    """results.json and table.md (atomically, rundir.write_results); the plots at the end.
    A demo suite's results: study.models."""
    from antibody.app.study.models import write_models
    from antibody.app.study.plots import write_figures
    from antibody.app.study.report import study_table

    if not isinstance(results, StudyResults):
        write_models(root, results, final)
        return
    write_results(root, "results.json", results.to_json(), study_table(results), echo=final)
    if final and results.summary:
        write_figures(results, root)


def _args(args: list[str]):
    import argparse

    parser = argparse.ArgumentParser(prog="python -m antibody study", add_help=False)
    parser.add_argument("study")
    parser.add_argument("--dry-run", action="store_true")
    parser.add_argument("--report", action="store_true")
    parser.add_argument("--only", default=None)
    parser.add_argument("--gpu", default=None)
    ns, rest = parser.parse_known_args(args)
    if rest or (ns.dry_run and ns.report) or (ns.gpu and not ns.dry_run):
        unexpected = rest or (["--dry-run", "--report"] if ns.report else [f"--gpu {ns.gpu} without --dry-run"])
        raise ConfigError(f"study: unexpected arguments {unexpected}; usage: study "
                          "<file.yaml> [--dry-run [--gpu NAME] | --report] [--only key=value,...]")
    if ns.gpu is not None:
        from antibody.app.study.cost import Accelerator

        try:
            ns.gpu = Accelerator(ns.gpu)
        except ValueError:
            raise ConfigError(f"study: --gpu {ns.gpu}: allowed {[a.value for a in Accelerator]}") from None
    return ns


def study_root(study: StudyConfig) -> Path:
    """runs/<study>/ (run.output_dir of the study's experiment and fixed overrides)."""
    base = ([f"experiment={study.experiment}"] if study.experiment else []) + list(study.fixed)
    return Path(compose(base).run.output_dir) / study.name


def study_command(args: list[str]) -> int:
    ns = _args(args)
    study = load_study(Path(ns.study))
    if ns.report:
        return report_only(study, study_root(study))
    return drive(study, study_root(study), ns.dry_run, ns.only, ns.study, ns.gpu)


def report_only(study: StudyConfig, root: Path) -> int:
    """`--report`: results.json, table.md and the plot from the runs on disk, nothing trained
    or evaluated (e.g. after editing the study's `paper` section, or while a study runs)."""
    cells = plan(study, root)
    write_study(root, collect(study, root, cells, len(jobs_of(cells)), {"trained": 0, "evaluated": 0}, 0.0))
    return 0


def drive(study: StudyConfig, root: Path, dry: bool = False, only_text: Optional[str] = None,
          where: str = "study", gpu=None) -> int:
    """Plan, then dry-run or run the study's cells (all, or those `--only` selects)."""
    from antibody.app.evaluate import refuse_multi_process
    from antibody.app.study.report import dry_run_table

    refuse_multi_process("demo" if study.suite else "study")

    all_cells = plan(study, root)
    only = parse_only(only_text, study)
    cells = [c for c in all_cells if selected(c, only)] if only else all_cells
    if not cells:
        raise ConfigError(f"{where}: no cell matches --only {only_text}")
    if dry:
        rows = dry_run(jobs_of(cells), root, measured_step_costs(root))
        models = {c.model_job.name for c in cells}
        to_eval = sum(not (root / m / "eval" / "metrics.json").is_file() for m in models)
        model = job_config(cells[0].model_job).model.name
        print(dry_run_table(rows, len(cells), to_eval, measured_eval_seconds(root, model)))
        print(_counted_cost(cells, rows, root, gpu))
        return 0
    root.mkdir(parents=True, exist_ok=True)
    write_study(root, run_study(study, root, cells, all_cells))
    return 0
