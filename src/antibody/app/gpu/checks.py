"""What `make gpu-check` (scripts/gpu_check.py) checks beside the methods' steps, on the
loaded base: generation and the judge's scores of its answers on a few prompts; on a 4-bit
base, an adapter stacked frozen (what merge_then_new_adapter does there instead of merging:
docs/gpu.md, "Merging into a 4-bit base") against the same adapter live; and a checkpoint
resume under gradient accumulation against the run straight through. Each check reports
its error instead of raising, so that one failure does not end the rest."""

from __future__ import annotations

import time
from pathlib import Path

# bf16 logits of the same computation along two code paths (live LoRA, stacked frozen LoRA)
STACKED_LOGIT_TOLERANCE = 0.05
# LoRA tensors of a resumed run against the straight one: equal but for GPU nondeterminism
RESUME_LORA_TOLERANCE = 1e-3


def check_failures(checks: dict) -> list[str]:
    """What the checks' results say went wrong (empty: all passed)."""
    out = [f"{name}: {c['error']}" for name, c in checks.items() if "error" in c]
    stacked, resume = checks.get("stacked_adapter", {}), checks.get("resume", {})
    if stacked.get("max_abs_logit_diff", 0.0) > STACKED_LOGIT_TOLERANCE:
        out.append(f"stacked_adapter: the frozen adapter's logits differ from the live adapter's by "
                   f"{stacked['max_abs_logit_diff']:.3g} (> {STACKED_LOGIT_TOLERANCE})")
    if "steps" in resume and (len(set(resume["steps"])) != 1 or resume["max_abs_lora_diff"] > RESUME_LORA_TOLERANCE):
        out.append(f"resume: steps {resume['steps']}, LoRA tensors differ by {resume['max_abs_lora_diff']:.3g} "
                   f"(> {RESUME_LORA_TOLERANCE}) from the run straight through")
    return out

PROMPTS = ("How do I bake bread?", "Name three primes.", "Write a haiku about rain.", "What is 2 + 3?")


def inference_checks(base, tokenizer, base_args: list[str], out_dir: Path, *, quantised: bool) -> dict:
    """What an evaluation does on the GPU, on a few prompts: greedy generation with the
    loaded base (the KV cache on the device) and the judge's scores of the answers; then,
    in nf4, an adapter stacked frozen beneath another (what merge_then_new_adapter does on
    a 4-bit base instead of merging: docs/gpu.md, "Merging into a 4-bit base") must give
    the logits of the same adapter trained live."""
    import torch

    from antibody.config import compose
    from antibody.evaluation.generation import make_text_generator
    from antibody.evaluation.judges import build_judge
    from antibody.models import cache_root

    out: dict = {}
    try:
        cfg = compose(base_args)
        t0 = time.perf_counter()
        generate = make_text_generator(base, tokenizer, cfg.data.prompt_format, max_new_tokens=16, batch_size=4)
        prompts = list(PROMPTS)
        answers = generate(prompts)
        scores = build_judge(cfg.eval.judge, cfg, cache_root()).score(prompts, answers)
        out["generation"] = {"prompts": len(prompts), "answers": len(answers), "seconds": time.perf_counter() - t0,
                             "judge": cfg.eval.judge.value, "scores": [float(x) for x in scores]}
    except Exception as exc:  # noqa: BLE001 - reported beside the methods, the rest goes on
        out["generation"] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
    if quantised:
        out["stacked_adapter"] = stacked_adapter_check(base, tokenizer, base_args, out_dir)
    out["resume"] = resume_check(base, tokenizer, base_args, out_dir)
    torch.cuda.empty_cache()
    return out


def stacked_adapter_check(base, tokenizer, base_args: list[str], out_dir: Path) -> dict:
    """A random non-zero adapter on `base`, its logits live, then saved and stacked frozen on
    the same base: the largest absolute logit difference (0 up to rounding), and whether
    the config could have merged it instead; `base` is left without adapters."""
    import torch

    from antibody.config import compose
    from antibody.models import save_adapter
    from antibody.models.adapters import apply_lora, merges_exactly, stack_frozen_adapter

    try:
        cfg = compose(base_args)
        torch.manual_seed(1)
        model = apply_lora(base, cfg.model.lora)
        model.eval()  # no LoRA dropout: the two paths must compute the same function
        with torch.no_grad():  # a non-zero adapter: lora_B starts at 0
            for n, p in model.named_parameters():
                if "lora_B" in n:
                    p.normal_(0.0, 0.02)
        ids = tokenizer(["How do I bake bread?"], return_tensors="pt").input_ids.to(next(base.parameters()).device)
        with torch.no_grad():
            live = model(input_ids=ids).logits.float()
        path = out_dir / "stacked-check-adapter"
        save_adapter(model, path)
        base = model.unload()
        stacked = stack_frozen_adapter(base, path, 0)
        stacked.eval()
        with torch.no_grad():
            frozen = stacked(input_ids=ids).logits.float()
        stacked.unload()
        return {"merges_exactly": merges_exactly(cfg.model), "max_abs_logit_diff": float((live - frozen).abs().max())}
    except Exception as exc:  # noqa: BLE001
        return {"error": f"{type(exc).__name__}: {exc}"[:300]}




def resume_check(base, tokenizer, base_args: list[str], out_dir: Path, steps: int = 2) -> dict:
    """Antibody's alignment with gradient accumulation over two micro-batches on the loaded
    base: `steps` optimiser steps straight, and one step, a checkpoint, then a resumed run to
    `steps`, each from the same LoRA draw. Reports the largest absolute difference of the
    LoRA tensors (0 up to the GPU's nondeterminism) and that both reached `steps`."""
    import lightning as L
    import torch
    from lightning.pytorch.callbacks import ModelCheckpoint

    from antibody.app.bench.run import method_config
    from antibody.app.stages import build_datamodule, module_for
    from antibody.config.schema import Stage
    from antibody.models.adapters import apply_lora

    try:
        cfg = method_config([*base_args, "method.align.accumulate_grad_batches=2"], Stage.ALIGN, "antibody", steps)
        dm = build_datamodule(cfg, tokenizer, Stage.ALIGN)

        def fit(max_steps: int, callbacks=(), ckpt=None) -> tuple[list, int]:
            L.seed_everything(cfg.run.seed, verbose=False)
            model = apply_lora(base, cfg.model.lora)
            model.train()
            module = module_for(Stage.ALIGN, model, cfg)
            trainer = L.Trainer(accelerator=cfg.trainer.accelerator, devices=1, precision=cfg.trainer.precision,
                                max_steps=max_steps, logger=False, enable_checkpointing=bool(callbacks),
                                callbacks=list(callbacks), enable_progress_bar=False, enable_model_summary=False,
                                limit_val_batches=0, num_sanity_val_steps=0)
            try:
                trainer.fit(module, datamodule=dm, ckpt_path=ckpt)
                lora = [p.detach().float().cpu().clone() for n, p in model.named_parameters() if "lora_" in n]
            finally:
                model.unload()
            return lora, trainer.global_step

        straight, n_straight = fit(steps)
        ckpt_dir = out_dir / "resume-check"
        fit(1, [ModelCheckpoint(dirpath=ckpt_dir, save_last=True, every_n_train_steps=1)])
        resumed, n_resumed = fit(steps, ckpt=str(ckpt_dir / "last.ckpt"))
        diff = max(float((a - b).abs().max()) for a, b in zip(straight, resumed, strict=True))
        torch.cuda.empty_cache()
        return {"steps": [n_straight, n_resumed], "accumulate": 2, "max_abs_lora_diff": diff}
    except Exception as exc:  # noqa: BLE001 - reported beside the methods, the rest goes on
        return {"error": f"{type(exc).__name__}: {exc}"[:300]}
