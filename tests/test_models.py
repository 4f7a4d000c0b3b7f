"""Model loading: cache safety, embedded conversion, tiny model, hub folders, LoRA/QLoRA."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from antibody.config import ConfigError, compose
from antibody.config.schema import ModelSource, Quantization
from antibody.models import (
    ModelError,
    cache_root,
    embedded,
    load_model,
    load_tokenizer,
    merge_adapter,
    merges_exactly,
    save_adapter,
    trainable_parameters,
)
from antibody.models import cache as cache_mod
from tests._synthetic import assert_close_bf16

_BASE = compose(["experiment=tiny"]).model


def model_cfg(**changes):
    """A copy of the tiny model config with top-level fields replaced."""
    cfg = dataclasses.replace(
        _BASE,
        lora=dataclasses.replace(_BASE.lora, target_modules=list(_BASE.lora.target_modules)),
        tiny=dataclasses.replace(_BASE.tiny),
    )
    return dataclasses.replace(cfg, **changes)


def batch(tok, texts=("The cat sat on the mat.", "Two plus two is four, said the tutor.")):
    enc = tok(list(texts), return_tensors="pt", padding=True)
    labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "labels": labels}


def snapshot(model):
    return {n: t.detach().clone() for n, t in model.state_dict().items()}


def randomise_lora_b(model, seed=1):
    """LoRA B starts at 0 (adapter = identity); give it values so adapters matter."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in trainable_parameters(model):
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)


# ---------------------------------------------------------------------------
# cache: atomic, locked, marker-last
# ---------------------------------------------------------------------------


def test_cache_root_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv(cache_mod.CACHE_ENV, str(tmp_path / "c"))
    assert cache_root() == tmp_path / "c"
    monkeypatch.delenv(cache_mod.CACHE_ENV)
    assert cache_root() == Path.home() / ".cache" / "antibody"


def _writer(calls):
    def build(tmp: Path) -> None:
        calls.append(tmp)
        (tmp / "data.txt").write_text("payload")

    return build


def test_build_once_builds_once_and_publishes_atomically(tmp_path):
    target, calls = tmp_path / "thing", []
    assert cache_mod.build_once(target, {"v": 1}, _writer(calls)) == target
    assert (target / "data.txt").read_text() == "payload"
    assert json.loads((target / cache_mod.MARKER).read_text()) == {"key": {"v": 1}}
    assert calls[0].parent == target.parent and calls[0] != target  # built beside, then renamed
    cache_mod.build_once(target, {"v": 1}, _writer(calls))
    assert len(calls) == 1
    assert not list(tmp_path.glob(".thing.tmp-*"))


def test_build_once_ignores_and_cleans_partial_and_incomplete_folders(tmp_path):
    target, calls = tmp_path / "thing", []
    leftover = tmp_path / ".thing.tmp-12345-deadbeef"  # a crashed builder's temp folder
    leftover.mkdir()
    (leftover / "data.txt").write_text("half")
    target.mkdir()  # a folder without marker (half written by hand) is not complete
    (target / "data.txt").write_text("half")
    assert not cache_mod.is_complete(target, {"v": 1})
    cache_mod.build_once(target, {"v": 1}, _writer(calls))
    assert len(calls) == 1 and (target / "data.txt").read_text() == "payload"
    assert not leftover.exists()
    # a different source key (upgraded asset package) triggers a rebuild
    cache_mod.build_once(target, {"v": 2}, _writer(calls))
    assert len(calls) == 2 and cache_mod.is_complete(target, {"v": 2})


def test_build_once_failure_publishes_nothing(tmp_path):
    def broken(tmp: Path) -> None:
        (tmp / "data.txt").write_text("partial")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        cache_mod.build_once(tmp_path / "thing", {"v": 1}, broken)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".thing.lock"]


def test_build_once_concurrent_callers_build_once(tmp_path):
    target, calls, results, errors = tmp_path / "thing", [], [], []

    def slow_build(tmp: Path) -> None:
        calls.append(tmp)
        time.sleep(0.3)  # long enough that every thread arrives while the first builds
        (tmp / "data.txt").write_text("payload")

    def worker():
        try:
            results.append(cache_mod.build_once(target, {"v": 1}, slow_build))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(calls) == 1 and results == [target] * 4
    assert (target / "data.txt").read_text() == "payload"


# ---------------------------------------------------------------------------
# tiny model and tokenizer
# ---------------------------------------------------------------------------


def test_tokenizer_is_smollm2_with_right_padding():
    tok = load_tokenizer(model_cfg())
    assert len(tok) == 49152 and tok.eos_token_id == 2 and tok.pad_token_id == 2
    assert tok.padding_side == "right" and tok.chat_template


def test_tiny_model_is_deterministic_per_seed():
    torch.manual_seed(123)
    before = torch.rand(3)
    m1, tok = load_model(model_cfg(), with_lora=False)
    m2, _ = load_model(model_cfg(), with_lora=False)
    m3, _ = load_model(model_cfg(tiny=dataclasses.replace(_BASE.tiny, seed=1)), with_lora=False)
    s1, s2, s3 = m1.state_dict(), m2.state_dict(), m3.state_dict()
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    assert not torch.equal(s1["model.layers.0.self_attn.q_proj.weight"], s3["model.layers.0.self_attn.q_proj.weight"])
    # the caller's random stream is not consumed by building models
    torch.manual_seed(123)
    assert torch.equal(torch.rand(3), before)
    c = m1.config
    assert (c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads, c.intermediate_size) == (
        64, 2, 4, 2, 128,
    )
    assert c.vocab_size == len(tok) and c.pad_token_id == c.eos_token_id == 2


# ---------------------------------------------------------------------------
# LoRA
# ---------------------------------------------------------------------------


def _expected_lora_count(base, targets, r):
    """r * (in + out) per targeted nn.Linear, counted on the plain model."""
    return sum(
        r * (mod.in_features + mod.out_features)
        for name, mod in base.named_modules()
        if isinstance(mod, torch.nn.Linear) and name.rsplit(".", 1)[-1] in targets
    )


def test_lora_wraps_only_targets_and_freezes_base():
    cfg = model_cfg()
    base, _ = load_model(cfg, with_lora=False)
    model, _ = load_model(cfg)
    names = [n for n, _ in trainable_parameters(model)]
    assert names and all(".lora_A." in n or ".lora_B." in n for n in names)
    wrapped = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in names}
    assert wrapped == set(cfg.lora.target_modules)
    assert sum(p.numel() for _, p in trainable_parameters(model)) == _expected_lora_count(
        base, cfg.lora.target_modules, cfg.lora.r
    ) == 2 * (4 * (64 + 64) + 2 * 4 * (64 + 32))  # 2 layers; k/v project to 2 kv heads * 16
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert frozen and not any("lora_" in n for n in frozen)


def test_lora_without_target_match_is_a_config_error():
    with pytest.raises(ConfigError, match=r"model\.lora\.target_modules.*q_proj"):
        load_model(model_cfg(lora=dataclasses.replace(_BASE.lora, target_modules=["no_such_proj"])))


def test_one_optimizer_step_changes_only_lora_tensors():
    model, tok = load_model(model_cfg())
    before = snapshot(model)
    opt = torch.optim.AdamW([p for _, p in trainable_parameters(model)], lr=1e-2, weight_decay=0.1)
    model.train()
    model(**batch(tok)).loss.backward()
    opt.step()
    after = snapshot(model)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all("lora_" in k for k in changed)
    assert any("lora_B" in k for k in changed)


def _lora_grads(gradient_checkpointing: bool):
    torch.manual_seed(0)  # peft draws lora_A from the global RNG: same adapter in both runs
    model, tok = load_model(model_cfg(gradient_checkpointing=gradient_checkpointing))
    randomise_lora_b(model)  # with B = 0 the gradient of A is 0: compare non-trivial grads
    calls = []
    # transformers 5 checkpoints a decoder layer's forward (not __call__), so hooks on the
    # layer itself run once; hooks inside it run again when backward recomputes the layer.
    attention = model.get_base_model().model.layers[0].self_attn
    handle = attention.register_forward_hook(lambda *args: calls.append(1))
    model.train()
    model(**batch(tok)).loss.backward()
    handle.remove()
    return {n: p.grad.clone() for n, p in trainable_parameters(model)}, len(calls)


def test_gradient_checkpointing_gives_the_same_gradients():
    plain, plain_calls = _lora_grads(False)
    ckpt, ckpt_calls = _lora_grads(True)
    assert plain_calls == 1 and ckpt_calls == 2  # checkpointing really recomputes the layer
    assert plain.keys() == ckpt.keys()
    for name in plain:
        assert plain[name].abs().sum() > 0, name
        torch.testing.assert_close(ckpt[name], plain[name], rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------------------------
# QLoRA on CPU (bitsandbytes 0.50)
# ---------------------------------------------------------------------------


def test_qlora_nf4_trains_on_cpu_and_keeps_the_4bit_base():
    import bitsandbytes as bnb
    from bitsandbytes.functional import dequantize_4bit

    fp32, _ = load_model(model_cfg(), with_lora=False)
    model, tok = load_model(model_cfg(quantization=Quantization.NF4), device="cpu")
    q_proj = model.get_base_model().model.layers[0].self_attn.q_proj.base_layer
    assert isinstance(q_proj, bnb.nn.Linear4bit) and q_proj.weight.quant_state.quant_type == "nf4"
    # nf4 of the same random weights: the dequantised copy is close (nf4 error ~10%)
    original = fp32.model.layers[0].self_attn.q_proj.weight
    deq = dequantize_4bit(q_proj.weight.data, q_proj.weight.quant_state)
    rel = ((deq.float() - original).norm() / original.norm()).item()
    assert 0 < rel < 0.2
    packed = {n: p.detach().clone() for n, p in model.named_parameters() if p.dtype == torch.uint8}
    assert packed and not any(p.requires_grad for n, p in model.named_parameters() if n in packed)
    before = snapshot(model)
    opt = torch.optim.AdamW([p for _, p in trainable_parameters(model)], lr=1e-2)
    model.train()
    loss = model(**batch(tok)).loss
    assert torch.isfinite(loss)
    loss.backward()
    opt.step()
    after = snapshot(model)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all("lora_" in k for k in changed)
    assert all(torch.equal(p, dict(model.named_parameters())[n]) for n, p in packed.items())


def test_qlora_int8_forward_backward_on_cpu():
    import bitsandbytes as bnb

    def lora_grads(quantization):
        torch.manual_seed(0)  # the same LoRA A draws in both models
        model, tok = load_model(model_cfg(quantization=quantization), device="cpu")
        randomise_lora_b(model)
        model.train()
        model(**batch(tok)).loss.backward()
        return model, torch.cat([p.grad.reshape(-1) for _, p in trainable_parameters(model)])

    model, got = lora_grads(Quantization.INT8)
    assert isinstance(model.get_base_model().model.layers[0].self_attn.q_proj.base_layer, bnb.nn.Linear8bitLt)
    _, want = lora_grads(Quantization.NONE)
    # int8 weights (absmax per row, 7 bits): the fp32 model's LoRA gradients to ~1%
    rel = float((got - want).norm() / want.norm())
    assert rel < 0.05, rel


def test_quantization_without_lora_is_a_config_error():
    with pytest.raises(ConfigError, match="model.lora.enabled"):
        load_model(model_cfg(quantization=Quantization.NF4, lora=dataclasses.replace(_BASE.lora, enabled=False)))


# ---------------------------------------------------------------------------
# hub source (local folders) and errors
# ---------------------------------------------------------------------------


@pytest.fixture
def tiny_hf_folder(tmp_path):
    model, tok = load_model(model_cfg(), with_lora=False)
    folder = tmp_path / "tiny-hf"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder, model, tok


def test_hub_source_loads_a_local_folder(tiny_hf_folder):
    folder, reference, tok = tiny_hf_folder
    cfg = model_cfg(source=ModelSource.HUB, path=str(folder), attn_implementation="eager")
    model, hub_tok = load_model(cfg, with_lora=False)
    assert model.config._attn_implementation == "eager"
    b = batch(hub_tok)
    assert hub_tok(["same text"])["input_ids"] == tok(["same text"])["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(model(**b).logits, reference(**b).logits)
    bf16, _ = load_model(dataclasses.replace(cfg, dtype="bfloat16"), with_lora=False)
    assert bf16.dtype == torch.bfloat16
    with torch.no_grad():  # the same function, to bf16 precision (measured: 4e-3 relative)
        assert_close_bf16(bf16.eval()(**b).logits.float(), reference(**b).logits, "bf16 logits")


def test_tokenizer_without_pad_gets_eos(tmp_path):
    tok = load_tokenizer(model_cfg())
    tok.pad_token = None
    tok.padding_side = "left"
    tok.save_pretrained(tmp_path)
    loaded = load_tokenizer(model_cfg(source=ModelSource.HUB, path=str(tmp_path)))
    assert loaded.pad_token == loaded.eos_token and loaded.padding_side == "right"


def test_unknown_hub_id_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError, match=r"model\.path='no-such-org/no-such-model'.*offline"):
        load_model(model_cfg(source=ModelSource.HUB, path="no-such-org/no-such-model"))


def test_hub_path_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"model\.path is required"):
        load_model(model_cfg(source=ModelSource.HUB, path=None))
    with pytest.raises(ConfigError, match=r"model\.path=.*not a folder"):
        load_model(model_cfg(source=ModelSource.HUB, path=str(tmp_path / "missing")))


def test_unknown_embedded_name_and_missing_asset_package():
    with pytest.raises(ConfigError, match=r"model\.name='nope'.*smollm2-135m-instruct"):
        load_model(model_cfg(source=ModelSource.EMBEDDED, name="nope"))
    missing = dataclasses.replace(embedded.DEFAULT_TOKENIZER_ASSET, package="antibody_no_such_asset_pkg")
    with pytest.raises(ModelError, match="make install"):
        embedded.gguf_path(missing)


# ---------------------------------------------------------------------------
# adapters
# ---------------------------------------------------------------------------


def test_adapter_save_load_round_trip_gives_identical_logits(tmp_path):
    model, tok = load_model(model_cfg())
    randomise_lora_b(model)
    b = batch(tok)
    model.eval()
    with torch.no_grad():
        expected = model(**b).logits
    save_adapter(model, tmp_path / "adapter")
    loaded, _ = load_model(model_cfg(), adapter_path=tmp_path / "adapter")
    loaded.eval()
    with torch.no_grad():
        assert torch.equal(loaded(**b).logits, expected)
    # loaded to continue training: the same tensors are trainable
    assert [n for n, _ in trainable_parameters(loaded)] == [n for n, _ in trainable_parameters(model)]
    fresh, _ = load_model(model_cfg())
    with torch.no_grad():
        assert not torch.allclose(fresh.eval()(**b).logits, expected)


def test_bad_adapter_path_is_a_clear_error(tmp_path):
    with pytest.raises(ModelError, match="adapter_config.json"):
        load_model(model_cfg(), adapter_path=tmp_path)
    base, _ = load_model(model_cfg(), with_lora=False)
    with pytest.raises(ModelError, match="no LoRA adapter"):
        save_adapter(base, tmp_path / "x")


def test_a_new_adapter_over_a_merged_alignment_preserves_the_function(tmp_path):
    """fp32 base: the alignment adapter is merged and a fresh one trains on top."""
    cfg = model_cfg()
    assert merges_exactly(cfg)
    model, tok = load_model(cfg)
    randomise_lora_b(model)
    save_adapter(model, tmp_path / "align")
    b = batch(tok)
    model.eval()
    with torch.no_grad():
        expected = model(**b).logits
    base_before = model.get_base_model().model.layers[0].self_attn.q_proj.base_layer.weight.detach().clone()

    merged, _ = load_model(cfg, base_adapters=[tmp_path / "align"])
    merged.eval()
    with torch.no_grad():
        torch.testing.assert_close(merged(**b).logits, expected, rtol=1e-5, atol=1e-5)
    new = trainable_parameters(merged)
    assert [n for n, _ in new] == [n for n, _ in trainable_parameters(load_model(cfg)[0])]
    assert all(torch.count_nonzero(p) == 0 for n, p in new if "lora_B" in n)  # a fresh adapter
    q_base = merged.get_base_model().model.layers[0].self_attn.q_proj.base_layer.weight
    assert not torch.equal(q_base, base_before)  # the old adapter now lives in the base

    # rebuilding from files: merge the saved alignment adapter, then load the new one
    randomise_lora_b(merged, seed=2)
    with torch.no_grad():
        expected2 = merged(**b).logits
    save_adapter(merged, tmp_path / "finetune")
    rebuilt, _ = load_model(cfg, base_adapters=[tmp_path / "align"], adapter_path=tmp_path / "finetune")
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.eval()(**b).logits, expected2, rtol=1e-5, atol=1e-5)


def _scale_lora_b(model, factor: float) -> None:
    with torch.no_grad():
        for name, p in trainable_parameters(model):
            if "lora_B" in name:
                p.mul_(factor)


@pytest.mark.parametrize(("changes", "merge_error"), [({"quantization": Quantization.NF4}, 0.5),
                                                     ({"dtype": "bfloat16"}, 0.25)], ids=["nf4", "bf16"])
def test_a_base_that_rounds_a_merge_stacks_the_alignment_adapter_frozen(tmp_path, changes, merge_error):
    """nf4 / bf16 base: the alignment adapter stays, frozen, under the new one (no merge).

    The adapter's delta is made smaller than half an nf4 step, so that peft's merge rounds
    it away (the failure this guards against, measured on the embedded model in
    docs/gpu.md); the stack keeps it exactly.
    """
    cfg = model_cfg(**changes)
    assert not merges_exactly(cfg)
    model, tok = load_model(cfg)
    randomise_lora_b(model)
    _scale_lora_b(model, 0.02)
    save_adapter(model, tmp_path / "align")
    b = batch(tok)
    base, _ = load_model(cfg, with_lora=False)
    with torch.no_grad():
        aligned = model.eval()(**b).logits
        plain = base.eval()(**b).logits
    assert (aligned - plain).abs().max() > 1e-3  # the adapter moves the function

    stacked, _ = load_model(cfg, base_adapters=[tmp_path / "align"])
    with torch.no_grad():
        torch.testing.assert_close(stacked.eval()(**b).logits, aligned, rtol=0, atol=0)
    trained = trainable_parameters(stacked)
    assert trained and all(".default." in n for n, _ in trained)
    assert all(torch.count_nonzero(p) == 0 for n, p in trained if "lora_B" in n)  # fresh
    frozen = {n: p.detach().clone() for n, p in stacked.named_parameters() if ".base0." in n}
    assert frozen and not any(p.requires_grad for n, p in stacked.named_parameters() if ".base0." in n)

    # one optimiser step moves the new adapter only
    stacked.train()
    opt = torch.optim.AdamW([p for _, p in trained], lr=1e-2)
    stacked(**b).loss.backward()
    opt.step()
    assert all(torch.equal(p, frozen[n]) for n, p in stacked.named_parameters() if n in frozen)
    assert any(torch.count_nonzero(p) for n, p in trainable_parameters(stacked) if "lora_B" in n)

    # saved: only the new adapter; rebuilt from files: the same function
    save_adapter(stacked, tmp_path / "finetune")
    assert sorted(p.name for p in (tmp_path / "finetune").iterdir() if p.is_dir()) == []
    with torch.no_grad():
        expected = stacked.eval()(**b).logits
    rebuilt, _ = load_model(cfg, base_adapters=[tmp_path / "align"], adapter_path=tmp_path / "finetune")
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.eval()(**b).logits, expected, rtol=0, atol=0)
    # evaluation with no adapter of its own keeps the stack too
    beneath, _ = load_model(cfg, with_lora=False, base_adapters=[tmp_path / "align"])
    with torch.no_grad():
        torch.testing.assert_close(beneath.eval()(**b).logits, aligned, rtol=0, atol=0)

    # what the merge would have done: requantising misplaces the adapter's effect by about its
    # own size (the stack above reproduces it exactly)
    merged = merge_adapter(load_model(cfg, adapter_path=tmp_path / "align")[0])
    with torch.no_grad():
        after_merge = merged.eval()(**b).logits
    effect = (aligned - plain).norm()
    assert (after_merge - aligned).norm() > merge_error * effect  # measured: 1.06 (nf4), 0.48 (bf16)


# ---------------------------------------------------------------------------
# embedded SmolLM2: conversion once (~25-35 s on 2 cores), then cache reuse
# ---------------------------------------------------------------------------

ASSET = embedded.EMBEDDED_MODELS["smollm2-135m-instruct"]


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    root = tmp_path_factory.mktemp("antibody-cache")
    return root, embedded.model_dir(ASSET, root)


def _gguf_rows(names, rows=256):
    """The first ``rows`` rows of GGUF tensors, dequantised by the gguf package itself."""
    from gguf import GGUFReader
    from gguf.quants import dequantize

    spec = importlib.util.find_spec(ASSET.package)
    reader = GGUFReader(Path(spec.submodule_search_locations[0]) / ASSET.gguf_file)
    found = {t.name: t for t in reader.tensors if t.name in names}
    return [
        torch.from_numpy(np.ascontiguousarray(dequantize(found[n].data[:rows], found[n].tensor_type)))
        for n in names
    ]


@pytest.mark.slow
def test_embedded_conversion_writes_a_plain_hf_folder(converted):
    _, folder = converted
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config and config["tie_word_embeddings"] is True
    assert (config["num_hidden_layers"], config["hidden_size"], config["num_key_value_heads"]) == (30, 576, 3)
    assert (folder / "model.safetensors").is_file() and (folder / "chat_template.jinja").is_file()
    assert cache_mod.is_complete(folder, embedded._cache_key(ASSET, embedded.gguf_path(ASSET), "model"))


@pytest.mark.slow
def test_embedded_cache_is_reused_and_partial_temp_dirs_ignored(converted, monkeypatch):
    root, folder = converted
    weights = folder / "model.safetensors"
    stamp = (weights.stat().st_mtime_ns, (folder / cache_mod.MARKER).stat().st_mtime_ns)
    leftover = folder.parent / f".{folder.name}.tmp-99999-deadbeef"  # a crashed converter
    leftover.mkdir()
    (leftover / "config.json").write_text("{ not json")

    def no_rebuild(*args, **kwargs):
        raise AssertionError("rebuilt or locked although a complete cache exists")

    # reuse is checked by what runs, not by how long it takes: no conversion, no lock
    monkeypatch.setattr(embedded, "_convert", no_rebuild)
    monkeypatch.setattr(cache_mod, "file_lock", no_rebuild)
    assert embedded.model_dir(ASSET, root) == folder
    assert (weights.stat().st_mtime_ns, (folder / cache_mod.MARKER).stat().st_mtime_ns) == stamp
    assert leftover.exists()  # the fast path neither reads nor needs the lock to skip it

    monkeypatch.setenv(cache_mod.CACHE_ENV, str(root))
    model, tok = load_model(compose([]).model, with_lora=False)
    assert weights.stat().st_mtime_ns == stamp[0]
    base = model
    assert base.lm_head.weight.data_ptr() == base.model.embed_tokens.weight.data_ptr()  # tie survived
    # weights equal the GGUF file's, dequantised independently with the gguf package
    # (attn_q/attn_k are permuted by the Llama GGUF layout, so compare v / ffn / embeddings)
    embed, v_proj, down_proj = _gguf_rows(["token_embd.weight", "blk.0.attn_v.weight", "blk.29.ffn_down.weight"])
    assert torch.equal(base.model.embed_tokens.weight[:256], embed)
    assert torch.equal(base.model.layers[0].self_attn.v_proj.weight[:256], v_proj)
    assert torch.equal(base.model.layers[29].mlp.down_proj.weight[:256], down_proj)
    ids = tok.apply_chat_template(
        [{"role": "user", "content": "What is 2 + 3?"}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )["input_ids"]
    assert tok.decode(ids[0]).endswith("<|im_start|>assistant\n")  # chat template kept
