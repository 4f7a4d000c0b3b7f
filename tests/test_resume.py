"""Kill-and-resume: a run checkpointed at step k and resumed to K equals a run straight to K."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from antibody.config.schema import LambdaMode
from antibody.methods.flat_align import FlatAlignModule
from antibody.methods.weighted_finetune import WeightedFinetuneModule
from tests._synthetic import Killed, SaveThenKill, SyntheticDataModule, tiny_lora_model, trainable, trainer

K = 4  # total optimiser steps
k = 2  # checkpointed step


def _align_module(cfg):
    a = cfg.method.align
    a.lambda_mode, a.rho, a.accumulate_grad_batches = LambdaMode.COSINE_EMA, 0.5, 2
    return FlatAlignModule(tiny_lora_model(), cfg.method.align)


def _finetune_module(cfg):
    cfg.method.finetune.accumulate_grad_batches = 1
    return WeightedFinetuneModule(tiny_lora_model(), cfg.method.finetune, detector_window=3)


def _constrained_module(cfg):
    from antibody.methods.constrained import ConstrainedFinetuneModule

    cfg.method.finetune.accumulate_grad_batches = 1
    return ConstrainedFinetuneModule(tiny_lora_model(), cfg.method.finetune)


STAGES = {"align": (_align_module, 3), "finetune": (_finetune_module, 4), "constrained": (_constrained_module, 4)}




def _state(module, trainer):
    opt = trainer.optimizers[0].state_dict()
    return {
        "params": [p.detach().clone() for p in trainable(module.model)],
        "opt": [(s["step"], s["exp_avg"], s["exp_avg_sq"]) for s in opt["state"].values()],
        "global_step": trainer.global_step,
        "stream_position": module.stream_position,
        "lambda": getattr(module, "lambda_state", None),
        "records": getattr(module, "weight_records", lambda: None)(),
        "sched": trainer.lr_scheduler_configs[0].scheduler.state_dict(),
    }


def _assert_same(a, b):
    for p, q in zip(a["params"], b["params"], strict=True):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-8)
    assert len(a["opt"]) == len(b["opt"]) > 0
    for (s1, m1, v1), (s2, m2, v2) in zip(a["opt"], b["opt"], strict=True):
        assert float(s1) == float(s2)
        torch.testing.assert_close(m1, m2, rtol=1e-6, atol=1e-9)
        torch.testing.assert_close(v1, v2, rtol=1e-6, atol=1e-12)
    assert a["global_step"] == b["global_step"] == K
    assert a["stream_position"] == b["stream_position"]
    assert a["sched"] == b["sched"]
    # alignment carries a lambda state, fine-tuning weight records: neither check below is skipped
    assert (a["lambda"] is None) != (a["records"] is None)
    if a["lambda"] is not None:
        assert a["lambda"].updates == b["lambda"].updates == K
        assert a["lambda"].ema == pytest.approx(b["lambda"].ema, rel=1e-6)
    if a["records"] is not None:
        assert [r["uid"] for r in a["records"]] == [r["uid"] for r in b["records"]]
        assert [r["w"] for r in a["records"]] == pytest.approx([r["w"] for r in b["records"]], rel=1e-5)


def _straight(stage, cfg, root):
    build, batch = STAGES[stage]
    module = build(cfg)
    t = trainer(K, root / "straight")
    t.fit(module, datamodule=SyntheticDataModule(stage, batch_size=batch))
    return _state(module, t)


@pytest.mark.parametrize("stage", ["align", "finetune", "constrained"])
def test_resume_from_step_checkpoint_equals_uninterrupted(tiny_cfg, tmp_path, stage):
    build, batch = STAGES[stage]
    want = _straight(stage, tiny_cfg, tmp_path)

    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=k, save_top_k=-1)
    first = build(tiny_cfg)
    trainer(k, tmp_path / "a", callbacks=[ckpt]).fit(
        first, datamodule=SyntheticDataModule(stage, batch_size=batch)
    )
    path = ckpt.best_model_path or ckpt.last_model_path
    assert f"step={k}" in path

    module = build(tiny_cfg)  # fresh process: same initial model, nothing carried over
    dm = SyntheticDataModule(stage, batch_size=batch)
    t = trainer(K, tmp_path / "b")
    t.fit(module, datamodule=dm, ckpt_path=path)
    assert dm.starts == [first.stream_position]  # the stream restarted where the first run stopped
    _assert_same(_state(module, t), want)


def test_resume_inside_an_accumulation_window(tiny_cfg, tmp_path):
    want = _straight("align", tiny_cfg, tmp_path)
    path = tmp_path / "mid.ckpt"
    first = _align_module(tiny_cfg)
    with pytest.raises(Killed):
        # batch 2 is the first micro-batch of step 2: its gradients live only in the checkpoint
        trainer(K, tmp_path / "a", callbacks=[SaveThenKill(path, at=2)]).fit(
            first, datamodule=SyntheticDataModule("align", batch_size=3)
        )
    assert first.micro_step == 1

    module = _align_module(tiny_cfg)
    dm = SyntheticDataModule("align", batch_size=3)
    t = trainer(K, tmp_path / "b")
    t.fit(module, datamodule=dm, ckpt_path=path)
    assert dm.starts == [3]
    _assert_same(_state(module, t), want)


def test_checkpoint_holds_trainable_tensors_only(tiny_cfg, tmp_path):
    """Frozen base weights are not written (they come from load_model on resume)."""
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=1, save_top_k=-1)
    module = _finetune_module(tiny_cfg)
    trainer(1, tmp_path / "a", callbacks=[ckpt]).fit(
        module, datamodule=SyntheticDataModule("finetune", batch_size=4)
    )
    saved = torch.load(ckpt.last_model_path or ckpt.best_model_path, weights_only=False)["state_dict"]
    trainable_names = {n for n, p in module.named_parameters() if p.requires_grad}
    frozen_names = {n for n, p in module.named_parameters() if not p.requires_grad}
    assert trainable_names and trainable_names <= set(saved)
    assert not (frozen_names & set(saved))
