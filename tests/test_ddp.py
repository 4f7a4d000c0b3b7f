"""Several processes (DDP on the CPU, gloo, 2 ranks), each stage: the semantics docs/multi-gpu.md states.

The ranks run under torchrun (tests/_ddp_worker.py), as on a cluster; the references are
computed here, in one process. Tolerances: the ranks and the references add the same fp32
numbers in another order (DDP's all-reduce sums rank gradients, then divides; one process
accumulates g/2 + g/2), which moves a gradient entry by a few ulps (~1e-7 relative). AdamW
normalises each entry by its running scale, so a parameter moves by at most ~lr * 1e-7
more or less per step: rtol 1e-5 / atol 1e-7 on 2-3 steps leaves a 100x margin and still
fails on any semantic difference (the tests below show those are >= 1e-3 relative).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from antibody.config.schema import AlignMethod
from antibody.methods.perturb import NORM_EPS
from antibody.methods.weighted_finetune import WeightedFinetuneModule
from tests import _ddp_worker as W
from tests._synthetic import (
    GradCapture,
    finetune_module,
    hf_loss,
    list_loader,
    tiny_lora_model,
    trainable,
    trainer,
)

pytestmark = pytest.mark.ddp

RTOL, ATOL = 1e-5, 1e-7
# a rank scores its 3 rows in a 3-row forward, the reference in a 6-row one: the matmuls
# block and round differently, by about one fp32 ulp of |log p| ~ 4-5 (4.8e-7, measured);
# r is a difference of two such numbers, so it is compared absolutely, at 4 ulps
LOGP_ATOL = 2e-6
REPO = Path(__file__).resolve().parents[1]
SCENARIOS = ["align_antibody", "align_booster", "align_vaccine", "align_repnoise", "finetune", "lisa", "nan_align"]


def torchrun(args: list[str], cwd: Path, timeout: float) -> subprocess.CompletedProcess:
    """2 ranks under torchrun; killed (the whole process group) if they outlive ``timeout``,
    so a hang fails the test instead of stalling the suite."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled",
           "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"the ranks did not finish within {timeout} s (a hang?):\n{out[-4000:]}")
    assert proc.returncode == 0, out[-6000:]
    return subprocess.CompletedProcess(cmd, proc.returncode, out)


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """Every scenario's results on rank 0 and rank 1 (one torchrun for all: ~30 s)."""
    out = tmp_path_factory.mktemp("ddp")
    torchrun(["-m", "tests._ddp_worker", str(out), *SCENARIOS], REPO, timeout=300)
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(W.WORLD)]


def assert_params_close(got, want):
    assert len(got) == len(want) > 0
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_ranks_hold_identical_parameters(ranks, scenario):
    a, b = ranks[0][scenario], ranks[1][scenario]
    assert a["global_step"] == b["global_step"] > 0
    # bit for bit: both ranks apply the same all-reduced numbers
    for p, q in zip(a["params"], b["params"], strict=True):
        assert torch.equal(p, q)
    for ga, gb in zip(a["grads"], b["grads"], strict=True):
        assert all(torch.equal(x, y) for x, y in zip(ga, gb, strict=True))


def _align_reference(method: AlignMethod, items: list[dict], steps: int, root) -> tuple[list, list]:
    """One process accumulating the ranks' micro-batches: rank 0's, then rank 1's, per step.
    RepNoise draws its noise from the item's position, which is the same on every rank (the
    worker's item k): the reference keeps it, so each replica's noise is the one it drew."""
    micro = []
    for k, it in enumerate(items):
        micro += [W.align_shard(it, r, k if method is AlignMethod.REPNOISE else len(micro) + r)
                  for r in range(W.WORLD)]
    module = W.align_module(W.align_cfg(method, accumulate=W.WORLD))
    capture = GradCapture()
    trainer(steps, root, callbacks=[capture]).fit(module, train_dataloaders=list_loader(micro))
    return [p.detach() for p in trainable(module.model)], capture.grads


@pytest.mark.parametrize("method", [AlignMethod.ANTIBODY, AlignMethod.BOOSTER, AlignMethod.VACCINE,
                                    AlignMethod.REPNOISE])
def test_align_equals_one_process_accumulating_the_replicas(ranks, method, tmp_path):
    """Documented: flat terms per replica, averaged over ranks before lambda_t; g_a averaged
    by DDP. So W ranks x N micro-batches = one process with N*W micro-batches per window.
    Vaccine's perturbation and RepNoise's MMD term are per replica in the same way (each
    from its own rows), and RepNoise's two backward passes are each averaged by DDP."""
    got = ranks[0][f"align_{method.value}"]
    params, grads = _align_reference(method, W.align_items(W.ALIGN_STEPS), W.ALIGN_STEPS, tmp_path)
    assert len(grads) == len(got["grads"]) == W.ALIGN_STEPS
    for g, w in zip(got["grads"], grads, strict=True):
        assert_params_close(g, w)
    assert_params_close(got["params"], params)


def _grad(loss, params):
    return torch.autograd.grad(loss, params)


@pytest.mark.parametrize("method", [AlignMethod.ANTIBODY, AlignMethod.BOOSTER])
def test_align_first_update_is_the_mean_of_per_replica_terms(ranks, method):
    """The update direction of step 1, from first principles (transformers' own loss, plain
    autograd): each replica perturbs along ITS harmful gradient; A, S, R are rank means;
    kkt lambda_t (Theorem 4.1) or Booster's constant from those means."""
    cfg = W.align_cfg(method).method.align
    model = tiny_lora_model()
    params = trainable(model)
    item = W.align_items(1)[0]
    a_terms, s_terms, r_terms = [], [], []
    for r in range(W.WORLD):
        shard = W.align_shard(item, r, 0)
        a_terms.append(_grad(hf_loss(model, shard["align"]), params))
        g_h = _grad(hf_loss(model, shard["harmful"]), params)
        norm = torch.linalg.vector_norm(torch.cat([g.reshape(-1) for g in g_h]))
        saved = [p.detach().clone() for p in params]
        with torch.no_grad():
            for p, g in zip(params, g_h, strict=True):
                p.sub_(cfg.rho * g / (norm + NORM_EPS))
        g_hp = _grad(hf_loss(model, shard["harmful"]), params)
        r_terms.append(_grad(hf_loss(model, shard["harmful"], prefix="refusal_"), params))
        with torch.no_grad():
            for p, s in zip(params, saved, strict=True):
                p.copy_(s)
        s_terms.append([h - hp for h, hp in zip(g_h, g_hp, strict=True)])

    def mean(terms):
        return [sum(ts) / len(ts) for ts in zip(*terms, strict=True)]

    a, s, rr = mean(a_terms), mean(s_terms), mean(r_terms)
    flat_a, flat_s = torch.cat([t.reshape(-1) for t in a]), torch.cat([t.reshape(-1) for t in s])
    if method is AlignMethod.ANTIBODY:
        lam = max(0.0, float((cfg.xi * flat_s.dot(flat_s) - flat_s.dot(flat_a)) / flat_s.dot(flat_s)))
        lambda2 = cfg.lambda2
    else:
        lam, lambda2 = cfg.lam, 0.0
    want = [ga + lam * gs + lambda2 * gr for ga, gs, gr in zip(a, s, rr, strict=True)]
    assert_params_close(ranks[0][f"align_{method.value}"]["grads"][0], want)
    # the per-replica perturbation matters: one perturbation along the rank-mean gradient
    # gives another S (so this test tells the two semantics apart)
    assert float(torch.cat([t.reshape(-1) for t in s_terms[0]]).sub(flat_s).norm()) > 1e-3 * float(flat_s.norm())


def test_finetune_equals_one_process_on_the_global_batch(ranks, tmp_path):
    """Documented: the softmax spans the global micro-batch (every rank's rows), each rank
    backpropagates its rows' share of the global loss; accumulation averages micro-batches.
    So 2 ranks x 3 rows x 2 micro-batches = one process on 6-row micro-batches, 2 per step."""
    got = ranks[0]["finetune"]
    items = W.finetune_items(W.FINETUNE_STEPS * W.FINETUNE_ACCUMULATE)
    module = finetune_module(WeightedFinetuneModule, tiny_lora_model(), W.finetune_cfg())
    capture = GradCapture()
    trainer(W.FINETUNE_STEPS, tmp_path, callbacks=[capture]).fit(module, train_dataloaders=list_loader(items))
    want = module.weight_records()

    assert [(r["step"], r["uid"]) for r in got["records"]] == [(r["step"], r["uid"]) for r in want]
    assert got["records"] == ranks[1]["finetune"]["records"]  # every rank holds the global records
    def column(records, key):
        return torch.tensor([r[key] for r in records], dtype=torch.float64)

    torch.testing.assert_close(column(got["records"], "w"), column(want, "w"), rtol=RTOL, atol=ATOL)
    for key in ("r", "logp_y", "logp_refusal"):
        torch.testing.assert_close(column(got["records"], key), column(want, key), rtol=0, atol=LOGP_ATOL)
    for g, w in zip(got["grads"], capture.grads, strict=True):
        assert_params_close(g, w)
    assert_params_close(got["params"], [p.detach() for p in trainable(module.model)])


def test_lisa_equals_one_process_on_the_global_batch(ranks, tmp_path):
    """Lisa's guide and user steps are weighted fine-tuning steps (the global semantics) and
    its proximal pull is added after the reduce, on the same parameters and anchors on
    every rank: 2 ranks x 3 rows = one process on the 6-row batches, through two cycles
    with the proximal term on."""
    from antibody.methods.lisa import LisaFinetuneModule

    module = finetune_module(LisaFinetuneModule, tiny_lora_model(), W.lisa_cfg(), max_steps=W.LISA_STEPS)
    capture = GradCapture()
    trainer(W.LISA_STEPS, tmp_path, callbacks=[capture]).fit(
        module, train_dataloaders=list_loader(W.lisa_items(module, None)))
    got = ranks[0]["lisa"]
    assert len(got["grads"]) == len(capture.grads) == W.LISA_STEPS
    for g, w in zip(got["grads"], capture.grads, strict=True):
        assert_params_close(g, w)
    assert_params_close(got["params"], [p.detach() for p in trainable(module.model)])


def test_finetune_weights_are_a_softmax_over_the_global_micro_batch(ranks):
    """Independent of the module: w = softmax(r / tau) over each 6-row global micro-batch
    (not over a rank's 3 rows, not over the 12-row accumulation window)."""
    records = ranks[0]["finetune"]["records"]
    tau = W.finetune_cfg().method.finetune.tau
    size = W.WORLD * W.FINETUNE_ROWS
    assert len(records) == size * W.FINETUNE_STEPS * W.FINETUNE_ACCUMULATE
    for start in range(0, len(records), size):
        chunk = records[start : start + size]
        r = torch.tensor([x["r"] for x in chunk], dtype=torch.float64)
        w = torch.tensor([x["w"] for x in chunk], dtype=torch.float64)
        torch.testing.assert_close(w, torch.softmax(r / tau, 0), rtol=1e-5, atol=1e-7)
        local = torch.softmax(r[: W.FINETUNE_ROWS] / tau, 0)  # what a per-rank softmax would give
        assert not torch.allclose(w[: W.FINETUNE_ROWS], local, rtol=1e-3)


def test_a_nan_on_one_rank_skips_the_step_on_every_rank(ranks, tmp_path):
    """Rank 1's harmful loss is NaN at item 1 (rank 0's is finite): both ranks skip that
    window (decided after an all-reduce), nobody hangs (the worker would time out), and the
    run equals one that never saw item 1."""
    a, b = ranks[0]["nan_align"], ranks[1]["nan_align"]
    assert a["skipped_steps"] == b["skipped_steps"] == 1
    assert a["global_step"] == W.ALIGN_STEPS and a["stream_position"] == b["stream_position"] == W.ALIGN_STEPS + 1
    items = [it for k, it in enumerate(W.align_items(W.ALIGN_STEPS + 1)) if k != W.NAN_AT]
    params, _ = _align_reference(AlignMethod.ANTIBODY, items, W.ALIGN_STEPS, tmp_path)
    assert_params_close(a["params"], params)


# ---------------------------------------------------------------------------- the CLI
TINY = ["experiment=tiny", "trainer.checkpoint_every_n_steps=2"]


def test_torchrun_finetune_writes_one_run_dir_equal_to_one_process(tmp_path):
    """`torchrun --nproc_per_node 2 -m antibody finetune ... trainer.devices=2
    trainer.strategy=ddp`: rank zero alone writes the run directory, and the run equals the
    one-process run (same global batches; the weights are the same softmax over them)."""
    from antibody.cli.main import main

    out = tmp_path / "runs"
    args = [*TINY, f"run.output_dir={out}"]
    torchrun(["-m", "antibody", "finetune", *args, "run.name=ddp", "trainer.devices=2", "trainer.strategy=ddp"],
             tmp_path, timeout=400)
    ddp = out / "ddp"
    names = sorted(p.relative_to(ddp).as_posix() for p in ddp.rglob("*") if p.is_file())
    # one set of files: no per-rank copies, no temporary files left by concurrent writers
    assert not [n for n in names if n.startswith(".") or "/." in n or "tmp" in n], names
    for name in ("config.yaml", "stage", "data_summary.json", "base_adapters.json", "metrics.json",
                 "weights.jsonl", "DONE", "checkpoints/last.ckpt"):
        assert name in names, name
    assert (ddp / "DONE").read_text() == "finetune\n"
    m = json.loads((ddp / "metrics.json").read_text())
    assert m["steps"] == 3

    assert main(["finetune", *args, "run.name=one"]) == 0
    one = out / "one"
    rows = {(r["step"], r["uid"]): r for r in map(json.loads, (ddp / "weights.jsonl").open())}
    want = {(r["step"], r["uid"]): r for r in map(json.loads, (one / "weights.jsonl").open())}
    assert rows.keys() == want.keys() and len(rows) == 3 * 4  # 3 steps of the global batch of 4
    for key, r in want.items():
        assert rows[key]["w"] == pytest.approx(r["w"], rel=RTOL, abs=ATOL), key
    got_adapter = load_file(ddp / "adapter" / "adapter_model.safetensors")
    want_adapter = load_file(one / "adapter" / "adapter_model.safetensors")
    assert got_adapter.keys() == want_adapter.keys()
    for name, tensor in want_adapter.items():
        torch.testing.assert_close(got_adapter[name], tensor, rtol=RTOL, atol=ATOL, msg=name)
