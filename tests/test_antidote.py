"""Antidote's pruning (methods/antidote.py) against an independent computation: the released
rule written out with numpy, on activations captured one unpadded row at a time (the
released calibration's batch size 1), and the repair stage through the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from peft import LoraConfig

from antibody.cli.main import main
from antibody.config import ConfigError, compose
from antibody.methods.antidote import antidote_prune, lora_linears, prune_mask
from antibody.models.adapters import activate_stack
from tests._synthetic import tiny_lora_model


def _released_mask(scores: np.ndarray, dense_ratio: float) -> np.ndarray:
    """utils.py:711-723 in numpy: per row, the int(cols (1 - dense)) smallest scores stay."""
    keep = int(scores.shape[1] * (1 - dense_ratio))
    mask = np.ones_like(scores, dtype=bool)
    for i, row in enumerate(scores):
        mask[i, np.argsort(row, kind="stable")[:keep]] = False
    return mask


@pytest.mark.parametrize("shape,dense", [((6, 576), 0.1), ((64, 8), 0.1), ((5, 7), 0.3), ((3, 10), 0.5)])
def test_prune_mask_zeroes_each_rows_top_scores_with_the_released_rounding(shape, dense):
    scores = torch.rand(shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    mask = prune_mask(scores, dense).numpy()
    np.testing.assert_array_equal(mask, _released_mask(scores.numpy(), dense))
    cols = shape[1]
    assert (mask.sum(1) == cols - int(cols * (1 - dense))).all()  # 576 -> 58 of each row, 8 -> 1
    for row, m in zip(scores.numpy(), mask, strict=True):  # every zeroed weight outscores every kept one
        assert row[m].min() > row[~m].max()


def _rows():
    gen = torch.Generator().manual_seed(3)
    return [torch.randint(3, 60, (n,), generator=gen) for n in (7, 12, 4, 9)]


def _padded(rows):
    width = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)], mask[i, : len(r)] = r, 1
    return {"input_ids": ids, "attention_mask": mask}


def _independent_masks(model, rows, dense):
    """Inputs of each LoRA layer captured row by row without padding; sums of squares, Wanda
    scores and masks in numpy."""
    layers = lora_linears(model)
    seen = {name: [] for name in layers}
    hooks = [layer.register_forward_hook(lambda m, inp, out, name=name: seen[name].append(inp[0].reshape(-1, inp[0].shape[-1])))
             for name, layer in layers.items()]
    with torch.no_grad():
        for r in rows:
            model(input_ids=r.unsqueeze(0))
    for h in hooks:
        h.remove()
    out = {}
    for name, layer in layers.items():
        x = torch.cat(seen[name]).double().numpy()
        scores = np.abs(layer.weight.detach().double().numpy()) * np.sqrt((x**2).sum(0))[None, :]
        out[name] = _released_mask(scores, dense)
    return out


def test_antidote_prunes_the_trained_adapter_as_the_released_rule_on_unpadded_rows():
    model = tiny_lora_model(b_std=0.3)
    # an adapter stacked frozen beneath the trained one (models.adapters): it computes too
    model.add_adapter("base0", LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    activate_stack(model)
    rows = _rows()
    model.eval()
    expected = _independent_masks(model, rows, 0.25)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    report = antidote_prune(model, [_padded(rows[:3]), _padded(rows[3:])], dense_ratio=0.25)

    layers = lora_linears(model)
    assert len(layers) == 8 and all(".default" in n for n in layers)  # 2 layers x q, v x A, B
    for name, layer in layers.items():
        w, w0, keep = layer.weight.detach(), before[f"{name}.weight"], ~torch.from_numpy(expected[name])
        np.testing.assert_array_equal(((w == 0) & (w0 != 0)).numpy(), expected[name] & (w0 != 0).numpy())
        assert torch.equal(w[keep], w0[keep])
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all(".default." in n for n in changed)  # base weights and the frozen adapter stay
    assert report.rows == 4 and report.tokens == sum(len(r) for r in rows)
    assert report.zeroed == sum(int(m.sum()) for m in expected.values())


def test_a_model_without_the_trained_adapter_is_refused():
    with pytest.raises(ValueError, match="no LoRA layers"):
        antidote_prune(torch.nn.Sequential(torch.nn.Linear(2, 2)), [], 0.1)


def test_repair_settings_are_checked_before_any_work():
    with pytest.raises(ConfigError, match=r"dense_ratio=1.0 is out of range"):
        compose(["method.repair.antidote.dense_ratio=1.0"])
    with pytest.raises(ConfigError, match="needs model.lora.enabled=true"):
        compose(["method=antidote", "model.lora.enabled=false"])


TINY = ["experiment=tiny", "method.align.max_steps=2", "method.finetune.max_steps=2"]


def test_repair_takes_a_fine_tuned_run_and_writes_one_that_evaluates(tmp_path):
    out = [f"run.output_dir={tmp_path}"]
    assert main(["align", *TINY, *out, "run.name=al", "method=antidote"]) == 0
    # a repair of an alignment run is refused, naming what it found
    with pytest.raises(ConfigError, match="finished align run; repair takes a finished fine-tuning run"):
        from antibody.app.repair import repaired_run

        repaired_run(compose([*TINY, *out, "run.init_from=al", "method=antidote"]))
    assert main(["finetune", *TINY, *out, "run.name=ft", "run.init_from=al", "method=antidote"]) == 0
    assert main(["repair", *TINY, *out, "run.name=rep", "run.init_from=ft", "method=antidote"]) == 0
    rep, ft = tmp_path / "rep", tmp_path / "ft"
    m = json.loads((rep / "metrics.json").read_text())
    assert m["stage"] == "repair" and m["method"] == "antidote" and m["init_from"] == str(ft)
    assert 0 < m["pruned"]["zeroed"] < m["pruned"]["weights"] and m["pruned"]["rows"] > 0
    assert json.loads((rep / "base_adapters.json").read_text()) == json.loads((ft / "base_adapters.json").read_text())
    from safetensors.torch import load_file

    a, b = load_file(ft / "adapter" / "adapter_model.safetensors"), load_file(rep / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    newly = sum(int(((b[k] == 0) & (a[k] != 0)).sum()) for k in a)
    already = sum(int((a[k] == 0).sum()) for k in a)
    assert m["pruned"]["zeroed"] - already <= newly <= m["pruned"]["zeroed"]
    assert all(torch.equal(a[k][b[k] != 0], b[k][b[k] != 0]) for k in a)  # nothing else changed
    assert main(["eval", f"run={rep}", "eval.max_new_tokens=4"]) == 0
    assert (rep / "eval" / "metrics.json").is_file()


def test_repair_refuses_none_and_several_processes_before_any_work(tmp_path, monkeypatch):
    from antibody.app.repair import repair_stage

    cfg = compose([*TINY, f"run.output_dir={tmp_path}", "run.init_from=x"])
    with pytest.raises(ConfigError, match="method.repair.method=none repairs nothing"):
        repair_stage(cfg)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="repair runs in one process"):
        repair_stage(compose([*TINY, f"run.output_dir={tmp_path}", "method=antidote", "run.init_from=x"]))
    assert not any(tmp_path.iterdir())  # nothing written
