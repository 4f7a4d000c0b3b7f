"""Device placement per DDP rank (on the CPU, the environment simulated) and the CUDA
checks: bf16 compute for nf4 and the bf16-mixed / bf16-true precisions (`gpu` marker:
deselected by default, skipped without CUDA; `make gpu-check` runs them)."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from antibody.config import compose
from antibody.config.schema import Quantization
from antibody.models import ModelError, load_model, trainable_parameters
from antibody.models import loading as loading_mod
from antibody.models.placement import local_rank, quantized_device
from tests._synthetic import BF16_RTOL, assert_close_bf16
from tests.conftest import requires_cuda
from tests.helpers import fp32_twin, frozen_state, randomise_lora_b, train_case


# ---------------------------------------------------------------------------- placement
@pytest.mark.parametrize(
    ("env", "rank"),
    [({}, 0), ({"LOCAL_RANK": "3"}, 3), ({"SLURM_LOCALID": "2"}, 2),
     ({"LOCAL_RANK": "1", "SLURM_LOCALID": "5"}, 1)],  # torchrun/Lightning's variable first
)
def test_local_rank_comes_from_the_launchers_environment(env, rank):
    assert local_rank(env) == rank


def test_each_rank_gets_its_own_gpu_and_the_cpu_without_cuda():
    assert [quantized_device(4, {"LOCAL_RANK": str(k)}) for k in range(4)] == [
        torch.device("cuda", k) for k in range(4)
    ]
    assert quantized_device(0, {"LOCAL_RANK": "3"}) == torch.device("cpu")


def test_a_rank_without_a_gpu_and_a_bad_rank_are_clear_errors():
    with pytest.raises(ModelError, match=r"local rank 2 .* sees 2 CUDA device\(s\).*trainer.devices"):
        quantized_device(2, {"LOCAL_RANK": "2"})
    with pytest.raises(ModelError, match=r"LOCAL_RANK='x' is not a local rank"):
        local_rank({"LOCAL_RANK": "x"})


class _Loaded(Exception):
    """Stops load_model at from_pretrained, carrying the arguments it was given."""


def test_quantised_load_uses_the_ranks_device_map(monkeypatch):
    """load_model, with no device named, creates the 4-bit model on cuda:<LOCAL_RANK> (not
    cuda:0 on every rank) with bf16 compute; CUDA is simulated, nothing is loaded."""
    monkeypatch.setenv("LOCAL_RANK", "3")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)

    def capture(location, **kwargs):
        raise _Loaded(kwargs)

    monkeypatch.setattr(loading_mod.AutoModelForCausalLM, "from_pretrained", capture)
    cfg = dataclasses.replace(compose(["experiment=tiny"]).model, quantization=Quantization.NF4)
    with pytest.raises(_Loaded) as caught:
        load_model(cfg)
    kwargs = caught.value.args[0]
    assert kwargs["device_map"] == {"": torch.device("cuda", 3)}
    assert kwargs["quantization_config"].bnb_4bit_compute_dtype == torch.bfloat16


# ---------------------------------------------------------------------------- CUDA
@requires_cuda
@pytest.mark.parametrize("case", ["align-antibody", "align-vaccine", "align-repnoise", "finetune-antibody",
                                  "finetune-lisa"])
def test_nf4_bf16_step_on_cuda_equals_the_dequantised_fp32_step(tiny_cfg, tmp_path, case):
    """nf4 on the GPU computes in bf16 (models/loading.py): the step agrees with the fp32
    CPU step on the dequantised weights to bf16 precision (tests/_synthetic.py's
    BF16_RTOL, the bound the bf16-mixed tests use), and only LoRA tensors move."""
    model_cfg = dataclasses.replace(tiny_cfg.model, quantization=Quantization.NF4, gradient_checkpointing=True)
    torch.manual_seed(0)
    nf4, _ = load_model(model_cfg, device="cuda:0")
    randomise_lora_b(nf4)
    twin = fp32_twin(tiny_cfg.model, nf4)  # CPU, fp32
    frozen = frozen_state(nf4)
    cfg = copy.deepcopy(tiny_cfg)
    cfg.trainer.accelerator, cfg.trainer.precision = "gpu", "bf16-mixed"
    got, _ = train_case(case, nf4, cfg, tmp_path / "cuda", accelerator="gpu", precision="bf16-mixed")
    want, _ = train_case(case, twin, tiny_cfg, tmp_path / "cpu")
    after = frozen_state(nf4)
    assert [n for n in frozen if not torch.equal(frozen[n], after[n])] == []
    for step, (g, w) in enumerate(zip(got, want, strict=True)):
        assert_close_bf16(g, w, f"{case} step {step}")


@requires_cuda
def test_quantised_model_is_created_on_the_ranks_gpu(monkeypatch):
    rank = torch.cuda.device_count() - 1  # the last GPU: differs from cuda:0 on a multi-GPU node
    monkeypatch.setenv("LOCAL_RANK", str(rank))
    cfg = dataclasses.replace(compose(["experiment=tiny"]).model, quantization=Quantization.NF4)
    model, _ = load_model(cfg)
    assert {p.device for p in model.parameters()} == {torch.device("cuda", rank)}


@requires_cuda
@pytest.mark.parametrize("precision", ["bf16-mixed", "bf16-true"])
def test_bf16_precisions_train_a_finite_step_close_to_fp32(tiny_cfg, tmp_path, precision):
    """Both bf16 settings run the Antibody alignment step on CUDA (bf16-true: bf16 weights
    and LoRA) and stay within bf16 precision of the fp32 step (bf16-true rounds the weights
    too, so its bound is twice bf16-mixed's)."""
    torch.manual_seed(0)
    model, _ = load_model(tiny_cfg.model)
    randomise_lora_b(model)
    fp32 = copy.deepcopy(model)
    got, _ = train_case("align-antibody", model, tiny_cfg, tmp_path / "bf16", accelerator="gpu", precision=precision)
    want, _ = train_case("align-antibody", fp32, tiny_cfg, tmp_path / "fp32")
    rel = 2 * BF16_RTOL if precision == "bf16-mixed" else 4 * BF16_RTOL
    for g, w in zip(got, want, strict=True):
        assert torch.isfinite(g).all()
        assert_close_bf16(g.float(), w, precision, rel=rel)
    assert all(torch.isfinite(p).all() for _, p in trainable_parameters(model))


def test_work_outside_lightning_runs_on_the_accelerator_the_trainer_names(monkeypatch):
    """Evaluation, the screen, merge-check and the base model's data are placed by
    trainer.accelerator (issue: generation ran on the CPU of a GPU machine)."""
    from antibody.config import ConfigError
    from antibody.models.placement import inference_device

    assert inference_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert inference_device("auto") == torch.device("cpu")
    with pytest.raises(ConfigError, match="trainer.accelerator=gpu asks for a GPU, but this machine has no CUDA"):
        inference_device("gpu")
    with pytest.raises(ConfigError, match="trainer.accelerator=mps: evaluation and the screen run on cpu or cuda"):
        inference_device("mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    assert inference_device("gpu") == inference_device("auto") == inference_device("cuda") == torch.device("cuda", 0)


def test_an_evaluation_loads_its_model_for_inference_on_that_device(monkeypatch, tmp_path):
    import antibody.models as models
    from antibody.app import evaluate as evaluate_mod
    from antibody.config import compose

    seen = {}

    def fake_load(cfg, **kwargs):
        seen.update(kwargs)
        raise RuntimeError("stop after the load")

    monkeypatch.setattr(models, "load_model", fake_load)
    cfg = compose(["experiment=tiny", f"run.output_dir={tmp_path}"])
    with pytest.raises(RuntimeError, match="stop after the load"):
        evaluate_mod.evaluate_model(cfg, None, tmp_path / "eval", records={}, tools=evaluate_mod.EvalTools(judge=None))
    assert seen["inference"] is True and seen["device"] == torch.device("cpu")


def test_the_step_timer_waits_for_cuda_before_reading_the_clock(monkeypatch):
    """CUDA kernels run asynchronously: StepTimer synchronises the module's GPU before each
    clock read (an optimiser step's end, the fit's end), and never on the CPU."""
    from types import SimpleNamespace

    from antibody.app import callbacks
    from antibody.app.callbacks import StepTimer

    events = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: events.append(("sync", device)))
    clock = iter(range(100))
    monkeypatch.setattr(callbacks.time, "perf_counter", lambda: events.append("clock") or float(next(clock)))
    timer = StepTimer()
    gpu = SimpleNamespace(device=torch.device("cuda", 0))
    trainer = SimpleNamespace(global_step=0)
    timer.on_fit_start(trainer, gpu)
    events.clear()
    trainer.global_step = 1
    timer.on_train_batch_end(trainer, gpu, None, None, 0)
    timer.on_fit_end(trainer, gpu)
    assert events == [("sync", torch.device("cuda", 0)), "clock", ("sync", torch.device("cuda", 0)), "clock"]
    events.clear()
    cpu = SimpleNamespace(device=torch.device("cpu"))
    trainer.global_step = 2
    timer.on_train_batch_end(trainer, cpu, None, None, 1)
    assert events == ["clock"] and timer.step_times == [1.0, 2.0]  # clock 2 - 1, then 4 - 2
