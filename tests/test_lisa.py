"""Lisa: the state schedule, its stream plan, the proximal gradient and exact resume."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch

from antibody.config import compose
from antibody.config.baselines import LisaConfig
from antibody.config.schema import FinetuneMethod, Weighting
from antibody.data.datamodule import SafetyDataModule
from antibody.data.plan import Split
from antibody.data.streams import TrainStream, take
from antibody.methods.lisa import LisaFinetuneModule, LisaPlan, LisaSchedule, LisaState
from antibody.models import load_model, load_tokenizer
from tests._synthetic import (
    GradCapture,
    Killed,
    SaveThenKill,
    clone_model,
    finetune_module,
    hf_loss,
    list_loader,
    tiny_lora_model,
    trainable,
    trainer,
)
from tests.helpers import lisa_items

G, U = LisaState.GUIDE, LisaState.USER


def _states(schedule: LisaSchedule, steps: int) -> list[LisaState]:
    return [schedule.state(s) for s in range(steps)]


def _lisa_cfg(cfg, *, align=1, user=2, rho=0.5, proximal_after=0.0, accumulate=1, lr=None):
    f = cfg.method.finetune
    f.method, f.weighting, f.accumulate_grad_batches, f.weight_decay = (
        FinetuneMethod.LISA,
        Weighting.UNIFORM,
        accumulate,
        0.0,
    )
    if lr is not None:
        f.lr = lr
    f.lisa = LisaConfig(
        rho=rho, align_steps=align, user_steps=user, min_cycles=1, proximal_after=proximal_after
    )
    return cfg


# ---------------------------------------------------------------------------- schedule
def test_released_schedule_at_10000_steps():
    s = LisaSchedule.from_config(LisaConfig(), 10_000)
    assert (s.guide_steps, s.user_steps, s.proximal_from) == (100, 900, 1000)
    states = _states(s, 10_000)
    assert states[:1000] == [G] * 100 + [U] * 900  # starts in the alignment state
    assert states == states[:1000] * 10
    assert s.guide_steps_before(10_000) == states.count(G) == 1000


def test_scaled_schedule_for_short_runs():
    s = LisaSchedule.from_config(LisaConfig(), 30)  # 30 < 3 * 1000: 10-step cycles of 1 + 9
    assert (s.guide_steps, s.user_steps, s.proximal_from) == (1, 9, 3)
    assert _states(s, 30) == ([G] + [U] * 9) * 3
    # the shortest cycle is 2 steps, and both states occur in every cycle
    short = LisaSchedule.from_config(LisaConfig(), 3)
    assert (short.guide_steps, short.user_steps) == (1, 1)
    heavy = LisaConfig(align_steps=900, user_steps=100)
    s = LisaSchedule.from_config(heavy, 30)
    assert (s.guide_steps, s.user_steps) == (9, 1)
    assert LisaSchedule.from_config(heavy, 6).user_steps == 1  # round(2 * 0.9) = 2 would leave none
    # half rounds up: cycle 5 with a 1:1 split -> 3 + 2 (round() would give 2)
    assert LisaSchedule.from_config(LisaConfig(align_steps=10, user_steps=10), 15).guide_steps == 3
    # at least min_cycles released cycles: no scaling
    assert LisaSchedule.from_config(LisaConfig(), 3000).cycle == 1000
    # ceil on the written decimal: 0.1 * 30 = 3 exactly
    assert LisaSchedule.from_config(LisaConfig(proximal_after=0.1), 31).proximal_from == 4


@pytest.mark.parametrize("accumulate", [1, 3])
def test_plan_maps_each_position_to_one_stream_in_order(accumulate):
    plan = LisaPlan(LisaSchedule.from_config(LisaConfig(), 30), accumulate)
    seen = {TrainStream.GUIDE: 0, TrainStream.USER: 0}
    for position in range(30 * accumulate):
        where = plan.at(position)
        assert len(where) == 1
        ((stream, index),) = where.items()
        step = position // accumulate  # every micro-batch of a step is in that step's state
        assert stream is (TrainStream.GUIDE if plan.schedule.state(step) is G else TrainStream.USER)
        assert index == seen[stream]  # index = earlier positions in that stream
        seen[stream] += 1
    assert seen == {TrainStream.GUIDE: 3 * accumulate, TrainStream.USER: 27 * accumulate}


# ---------------------------------------------------------------------------- gradients
class _Reference(L.Callback):
    """Before each step: the trainable tensors and the gradient of the step's own loss,
    computed on a copy of the model with transformers' loss (token-mean NLL, which is the
    uniform weighting's loss), i.e. without any proximal term."""

    def __init__(self):
        self.params: list[list[torch.Tensor]] = []
        self.loss_grads: list[torch.Tensor] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.params.append([p.detach().clone() for p in trainable(pl_module.model)])
        ref = clone_model(pl_module.model)
        (batch,) = (v for k, v in batch.items() if k != "position")
        grads = torch.autograd.grad(hf_loss(ref, batch), trainable(ref))
        self.loss_grads.append(torch.cat([g.reshape(-1) for g in grads]))


def _flat(ts):
    return torch.cat([t.reshape(-1) for t in ts])


def _run_proximal(tiny_cfg, tmp_path, proximal_after, steps=8, rho=0.5):
    # cycle of 2 guide + 2 user steps: G G U U G G U U
    cfg = _lisa_cfg(tiny_cfg, align=2, user=2, rho=rho, proximal_after=proximal_after, lr=1e-2)
    module = finetune_module(LisaFinetuneModule, tiny_lora_model(), cfg, max_steps=steps)
    ref, cap = _Reference(), GradCapture()
    t = trainer(steps, tmp_path, callbacks=[ref, cap])
    t.fit(module, train_dataloaders=list_loader(lisa_items(module.stream_plan, steps)))
    states = _states(module.schedule, steps)
    assert states == [G, G, U, U] * 2
    return module, t, ref, cap, states


def _expected_pull(states, ref, step, rho, proximal_from):
    """rho * (theta - theta_other), theta_other = the tensors when the other state last
    ended, i.e. at the start of this phase; None in the first phase or before proximal_from."""
    start = step
    while start > 0 and states[start - 1] is states[step]:
        start -= 1
    if start == 0 or step < proximal_from:
        return None
    return rho * (_flat(ref.params[step]) - _flat(ref.params[start]))


def test_proximal_gradient_is_rho_times_the_distance_to_the_other_state(tiny_cfg, tmp_path):
    rho = 0.5
    module, t, ref, cap, states = _run_proximal(tiny_cfg, tmp_path, proximal_after=0.0, rho=rho)
    nonzero = 0
    for step in range(8):
        got = _flat(cap.grads[step])
        pull = _expected_pull(states, ref, step, rho, proximal_from=0)
        want = ref.loss_grads[step] + (pull if pull is not None else 0.0)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
        if pull is not None and float(pull.norm()) > 1e-3:
            nonzero += 1
    assert nonzero == 3  # steps 3 (toward the guide state's end), 5 and 7: the test has teeth
    # the last step's logs: a user step, and the norm of the gradient it added
    assert float(t.callback_metrics["finetune/lisa_state"]) == 1.0
    last = _expected_pull(states, ref, 7, rho, 0)
    assert float(t.callback_metrics["finetune/proximal_norm"]) == pytest.approx(float(last.norm()), rel=1e-5)
    # weight records hold user rows only (4 user steps of 4 rows)
    assert len(module.weight_records()) == 16
    assert all(r["uid"].startswith("row-") for r in module.weight_records())


def test_proximal_term_is_off_before_proximal_after(tiny_cfg, tmp_path):
    rho = 0.5
    _, _, ref, cap, states = _run_proximal(tiny_cfg, tmp_path, proximal_after=0.5, rho=rho)
    proximal_from = math.ceil(0.5 * 8)
    for step in range(8):
        pull = _expected_pull(states, ref, step, rho, proximal_from)
        want = ref.loss_grads[step] + (pull if pull is not None else 0.0)
        torch.testing.assert_close(_flat(cap.grads[step]), want, rtol=1e-5, atol=1e-7)
    # the comparison above tells on and off apart. Step 3 had an anchor and had moved away
    # from it: the term switched on there would have added a pull far above the tolerance,
    # yet the module's gradient was the loss's alone
    off = rho * (_flat(ref.params[3]) - _flat(ref.params[2]))
    assert float(off.norm()) > 1e-3
    assert not torch.allclose(ref.loss_grads[3] + off, _flat(cap.grads[3]), rtol=1e-5, atol=1e-7)
    # and from proximal_from on it is switched on: step 5's gradient is no longer the loss's
    on = _flat(cap.grads[5]) - ref.loss_grads[5]
    assert float(on.norm()) > 1e-3
    torch.testing.assert_close(on, rho * (_flat(ref.params[5]) - _flat(ref.params[4])), rtol=1e-4, atol=1e-7)


# ---------------------------------------------------------------------------- real data
@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """One tiny-config DataModule (real offline sources) shared by the tests below."""
    root = tmp_path_factory.mktemp("lisa")
    cfg = compose(["experiment=tiny", f"run.output_dir={root / 'runs'}"])
    dm = SafetyDataModule(cfg, load_tokenizer(cfg.model), "finetune", cache_dir=root / "cache")
    dm.setup()
    return dm


def _module(cfg, steps, seed=0):
    torch.manual_seed(seed)  # new LoRA tensors draw from the global RNG
    model, _ = load_model(cfg.model)
    model.train()
    return finetune_module(LisaFinetuneModule, model, cfg, max_steps=steps)


def _fresh_cfg(tmp_path, accumulate=1):
    cfg = compose(["experiment=tiny", f"run.output_dir={tmp_path / 'runs'}"])
    return _lisa_cfg(cfg, align=1, user=2, rho=0.5, proximal_after=0.0, accumulate=accumulate)


def test_declared_plan_items(data):
    """A module's plan decides what each item holds; batch j of a stream is the same
    whichever plan asks for it, and a plan may not read a stream it did not declare."""

    class Both:
        streams = (TrainStream.USER, TrainStream.GUIDE)

        def at(self, position):
            return {TrainStream.USER: 2 * position, TrainStream.GUIDE: position}

    class Stray(Both):
        streams = (TrainStream.USER,)

    flat = take(data.train_stream(0), 6)
    items = take(data.train_stream(0, plan=Both()), 3)
    assert [sorted(i) for i in items] == [["guide", "position", "user"]] * 3
    assert [i["user"]["uid"] for i in items] == [flat[0]["uid"], flat[2]["uid"], flat[4]["uid"]]
    guide = take(data.train_stream(0, plan=LisaPlan(LisaSchedule(1, 1, 0), 1)), 6)[::2]
    assert [i["guide"]["uid"] for i in items] == [g["guide"]["uid"] for g in guide]
    with pytest.raises(ValueError, match="declares"):
        take(data.train_stream(0, plan=Stray()), 1)


def test_user_steps_see_the_sft_batches_in_order(data, tmp_path):
    steps = 6  # G U U G U U
    module = _module(_fresh_cfg(tmp_path), steps)
    trainer(steps, tmp_path).fit(module, datamodule=data)
    sft = [item["uid"] for item in take(data.train_stream(0), 4)]  # SFT batches 0, 1, 2, 3
    uids = [r["uid"] for r in module.weight_records()]
    assert uids == [u for batch in sft for u in batch]
    # the guide items are alignment batches, from their own sampler
    items = take(data.train_stream(0, plan=module.stream_plan), steps)
    align = {r.uid for r in data.records(Split.ALIGNMENT)}
    assert [set(i) - {"position"} for i in items] == [{"guide"}, {"user"}, {"user"}] * 2
    assert all(set(i["guide"]["uid"]) <= align for i in items if "guide" in i)
    assert [i["user"]["uid"] for i in items if "user" in i] == sft




def _state(module, t):
    opt = t.optimizers[0].state_dict()["state"]
    return (
        [p.detach().clone() for p in trainable(module.model)],
        [(s["exp_avg"], s["exp_avg_sq"]) for s in opt.values()],
        [r["uid"] for r in module.weight_records()],
        t.global_step,
    )


@pytest.mark.parametrize(
    ("accumulate", "kill_at", "micro_step"),
    [(1, 4, 0), (2, 8, 1)],
    ids=["step-checkpoint", "inside-accumulation-window"],
)
def test_resume_inside_a_cycle_equals_an_uninterrupted_run(data, tmp_path, accumulate, kill_at, micro_step):
    # G U U G U U G: killed after step 4 (a user step with both anchors set, the proximal
    # term on) or inside step 4's accumulation window
    steps = 7
    cfg = _fresh_cfg(tmp_path, accumulate)
    straight = _module(cfg, steps)
    t = trainer(steps, tmp_path / "straight")
    t.fit(straight, datamodule=data)
    want = _state(straight, t)

    path = tmp_path / "mid.ckpt"
    first = _module(cfg, steps)
    with pytest.raises(Killed):
        trainer(steps, tmp_path / "a", callbacks=[SaveThenKill(path, kill_at)]).fit(first, datamodule=data)
    assert first.micro_step == micro_step
    assert set(first._anchors) == {G, U} and first._state is U

    resumed = _module(cfg, steps, seed=1)  # a fresh process: nothing carried over but the checkpoint
    t = trainer(steps, tmp_path / "b")
    t.fit(resumed, datamodule=data, ckpt_path=path)
    got = _state(resumed, t)
    assert got[3] == want[3] == steps
    assert got[2] == want[2]
    for a, b in zip(got[0], want[0], strict=True):
        assert torch.equal(a, b)
    for (m1, v1), (m2, v2) in zip(got[1], want[1], strict=True):
        assert torch.equal(m1, m2) and torch.equal(v1, v2)


def test_paper_experiments_run_the_released_lisa_cycle():
    """At the paper's length (1250 steps for Llama-2-7B on GSM8K) the released scripts run
    100 guide + 900 user steps and start a second cycle at step 1000; our 3-cycle scaling is
    for short embedded runs only (docs/fidelity.md, summary row 4)."""
    from antibody.config.compose import default_conf_dir

    for path in sorted((default_conf_dir() / "experiment" / "paper").glob("*.yaml")):
        cfg = compose([f"experiment=paper/{path.stem}", "method=lisa"])
        schedule = LisaSchedule.from_config(cfg.method.finetune.lisa, cfg.method.finetune.max_steps)
        assert (schedule.guide_steps, schedule.user_steps) == (100, 900), path.stem
        assert schedule.state(999) is LisaState.USER and schedule.state(1000) is LisaState.GUIDE
    # the embedded demo keeps its scaled cycles: 30 steps, 3 cycles of 1 guide + 9 user steps
    demo = compose(["experiment=demo", "method=lisa"])
    short = LisaSchedule.from_config(demo.method.finetune.lisa, demo.method.finetune.max_steps)
    assert (short.guide_steps, short.user_steps) == (1, 9)
