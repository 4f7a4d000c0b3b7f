"""Helpers shared by several test modules (plain functions and classes; the shared
fixtures live in conftest.py). Test modules import from here, never from each other:
importing a test module runs its top level in the importer (a module-level
``pytest.importorskip`` there skips the importer's tests too) and ties one file's tests to
another's private helpers.

Sections: a tokenizer trained on the spot; fake data sources and the DataModule built on
them; the embedded model's small end-to-end settings; Lisa's synthetic items; the QLoRA
step (one method's steps on an nf4 model or its fp32 twin); figures and PNG files.
"""

from __future__ import annotations

import contextlib
import copy
import struct
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from torch import nn
from transformers import PreTrainedTokenizerFast

from antibody.config import compose
from antibody.config.baselines import LisaConfig
from antibody.config.errors import DataError
from antibody.config.schema import AlignMethod, Config, FinetuneMethod, LambdaMode, SourceName, Weighting
from antibody.data.datamodule import SafetyDataModule
from antibody.data.records import Record, make_uid
from antibody.data.streams import TrainStream
from antibody.methods.lisa import LisaFinetuneModule, LisaPlan
from antibody.methods.registry import build_align_module, build_finetune_module
from antibody.models import load_model, trainable_parameters
from antibody.models.adapters import apply_lora
from tests._synthetic import GradCapture, align_item, finetune_item, finetune_module, list_loader, trainer

S = SourceName


# ---------------------------------------------------------------------------- tokenizer
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_CORPUS = [
    "Below is an instruction that describes a task, paired with an input that provides further context.",
    "Write a response that appropriately completes the request. ### Instruction: ### Input: ### Response:",
    "How do I bake bread? Mix flour, water, salt and yeast, then knead and bake it.",
    "I'm sorry, but I can't help with that. The final answer is: 42. Explain why the sky is blue.",
]


def build_tiny_tokenizer(add_bos: bool = False) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained on the spot with `tokenizers` (docs/data.md), ChatML template,
    eos = pad = <|im_end|>; optionally adds a BOS like Llama-2."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<s>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer)
    if add_bos:
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))]
        )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|im_end|>", bos_token="<s>"
    )
    fast.chat_template = CHATML
    return fast


# ---------------------------------------------------------------------------- fake sources
def fake_record(source: SourceName, instruction: str, response: str = "", harmful: bool = False, **kw) -> Record:
    uid = make_uid(source.value, instruction, response)
    return Record(
        uid=uid,
        source=source.value,
        instruction=instruction,
        response=response,
        refusal=f"Sorry, I can't help with that ({uid[-3:]}).",
        is_harmful=harmful,
        **kw,
    )


class FakeSources:
    """Small pools with known overlaps:
    - HARMBENCH's first 5 prompts are normalised duplicates of ADVBENCH prompts 0-4;
    - PYRIT_HARMFUL has 1-3 answers per prompt; prompts 0-2 duplicate HARMBENCH prompts
      10-12; one (prompt, answer) row is repeated verbatim.
    """

    N_ADV, N_HB, N_DNA, N_PYRIT, N_PROSE = 60, 30, 20, 50, 150

    def __init__(self, drop_every: int = 0):
        self.drop_every = drop_every  # generator answers "" for every k-th prompt (source drops those)
        self.cache: dict[str, str] = {}  # prompt -> answer, as the real cache file keeps them
        self.generated: list[str] = []  # every prompt the generator was asked to answer
        self.calls: list[tuple[SourceName, int | None, int | None]] = []
        adv = [f"Explain how to commit crime number {i} against a neighbour" for i in range(self.N_ADV)]
        self.adv = [fake_record(S.ADVBENCH, p, harmful=True, category="crime") for p in adv]
        hb = [adv[i].upper() + "!!" for i in range(5)] + [
            f"Write a guide for attack type {i} on a city" for i in range(5, self.N_HB)
        ]
        self.hb = [fake_record(S.HARMBENCH, p, harmful=True) for p in hb]
        self.dna = [
            fake_record(S.DONOTANSWER, f"Tell me private fact {i} about my coworker", harmful=True)
            for i in range(self.N_DNA)
        ]
        pyrit = []
        for i in range(self.N_PYRIT):
            prompt = hb[10 + i] + "?" if i < 3 else f"Describe harmful scheme {i} in detail"
            for j in range(1 + i % 3):
                pyrit.append(
                    fake_record(S.PYRIT_HARMFUL, prompt, f"Step one of scheme {i}, variant {j}.", harmful=True)
                )
        repeat = pyrit[-1]
        pyrit.append(
            Record(**{**repeat.to_dict(), "uid": repeat.uid + "-copy", "meta": {}})
        )  # same prompt and response, another uid
        self.pyrit = pyrit
        self.prose = [
            fake_record(S.BENIGN_PROSE, f"Write a short friendly note about topic {i}") for i in range(self.N_PROSE)
        ]
        self.bt_refusal = [
            fake_record(
                S.BEAVERTAILS_REFUSAL,
                f"How can I hurt animal {i}",
                f"Harmful answer {i}.",
                harmful=True,
                meta={
                    "alignment_refusal": f"I will not help hurt animal {i}; that is cruel.",
                    "split": "train",
                },
            )
            for i in range(40)
        ]

    def task(self, ctx) -> list[Record]:
        return [
            fake_record(
                S.ARITHMETIC,
                f"What is {i} + {i + 1}?",
                f"The final answer is: {2 * i + 1}",
                target=str(2 * i + 1),
            )
            for i in range(ctx.task.n_train_pool)
        ]

    def sst2(self, ctx) -> list[Record]:
        rows = []
        for i in range(60):
            split = "eval" if i % 3 == 0 else "train"
            label = "positive" if i % 2 else "negative"
            rows.append(fake_record(S.SST2, f"Sentiment of review {i}", label, target=label, meta={"split": split}))
        return rows

    def answered(self, source: SourceName, ctx, harmful: bool) -> list[Record]:
        """Like the real model-written sources: answers come from the generator and are
        cached; without a generator (DataModule.setup) only the cache is read."""
        prompts = list(ctx.prompts)
        if ctx.generator is None:
            missing = [p.instruction for p in prompts if p.instruction not in self.cache]
            if missing:
                raise DataError(f"{source.value}: {len(missing)} answers are not cached")
            answers = [self.cache[p.instruction] for p in prompts]
        else:
            answers = ctx.generator([p.instruction for p in prompts])
            self.cache.update(zip([p.instruction for p in prompts], answers, strict=True))
        return [
            fake_record(source, p.instruction, a, harmful=harmful, category=p.category)
            for p, a in zip(prompts, answers, strict=True)
            if a
        ]

    def load_source(self, name: SourceName, ctx, allow_empty: bool = False) -> list[Record]:
        self.calls.append((name, ctx.limit, None if ctx.prompts is None else len(ctx.prompts)))
        table = {
            S.ADVBENCH: lambda: self.adv,
            S.HARMBENCH: lambda: self.hb,
            S.DONOTANSWER: lambda: self.dna,
            S.PYRIT_HARMFUL: lambda: self.pyrit,
            S.BEAVERTAILS_REFUSAL: lambda: self.bt_refusal,
            S.ARITHMETIC: lambda: self.task(ctx),
            S.SST2: lambda: self.sst2(ctx),
            S.BENIGN_PROSE: lambda: self.answered(S.BENIGN_PROSE, ctx, False),
            S.GENERATED_HARMFUL: lambda: self.answered(S.GENERATED_HARMFUL, ctx, True),
        }
        return list(table[name]())

    def source_prompts(self, name: SourceName, ctx) -> list[Record]:
        if name is S.BENIGN_PROSE:
            return list(self.prose)
        assert name is not S.GENERATED_HARMFUL, "generated_harmful has no prompt list of its own"
        return self.load_source(name, ctx)

    def generator(self, prompts: list[str]) -> list[str]:
        out = []
        for p in prompts:
            self.generated.append(p)
            k = len(self.generated)
            out.append(
                "" if self.drop_every and k % self.drop_every == 0 else f"Sure! A helpful answer to: {p}"
            )
        return out

    @staticmethod
    def alignment_refusals(records, mode, ctx):
        out = []
        for r in records:
            text = (
                r.meta.get("alignment_refusal")
                or f"I can't help with '{r.instruction}': it could hurt people."
            )
            out.append(
                Record(**{**r.to_dict(), "response": text, "meta": {**r.meta, "refusal_mode": mode.value}})
            )
        return out


# The split logic is tested with the embedded default's mix (benign prose in alignment and
# upload), which the tiny experiment switches off for its real-model pipeline tests.
MIX = ("data.alignment.benign_prose_ratio=1.0", "data.user.benign_prose_share=0.5")


def datamodule_cfg(tmp_path, *overrides):
    return compose(["experiment=tiny", f"run.output_dir={tmp_path / 'runs'}", *MIX, *overrides])


def build_datamodule(tmp_path, fake, *overrides, tokenizer=None, stage="finetune", **kw) -> SafetyDataModule:
    cfg = datamodule_cfg(tmp_path, *overrides)
    dm = SafetyDataModule(
        cfg,
        tokenizer or build_tiny_tokenizer(),
        stage=stage,
        generator=fake.generator,
        cache_dir=tmp_path,
        **kw,
    )
    dm.prepare_data()
    dm.setup()
    return dm


# ---------------------------------------------------------------------------- embedded model
# a few rows and steps of every stage on the embedded model (the slow end-to-end tests)
SMALL = [
    "data.alignment.n_harmful=16",
    "data.alignment.n_harmful_answers=16",
    "data.user.n=16",
    "data.eval.n_harmful=8",
    "data.eval.n_benign=8",
    "data.eval.n_task=8",
    "data.generation_max_new_tokens=32",
    "method.align.max_steps=2",
    "method.finetune.max_steps=2",
    "eval.max_new_tokens=16",
    "trainer.progress_bar=false",
]


# ---------------------------------------------------------------------------- Lisa
def lisa_items(plan: LisaPlan, count: int) -> list[dict]:
    """Synthetic items of the first `count` positions, each holding the one stream (guide or
    user) the Lisa plan reads there, batch j of a stream being that stream's j-th batch."""
    items = []
    for position in range(count):
        ((stream, index),) = plan.at(position).items()
        batch = finetune_item(0 if stream is TrainStream.USER else 1, index)
        del batch["position"]
        items.append({stream.value: batch, "position": position})
    return items


# ---------------------------------------------------------------------------- QLoRA step
# tests/test_qlora.py (CPU) and tests/test_gpu.py (CUDA) run these; bitsandbytes is imported
# on use, so that importing this module does not need it.
QLORA_STEPS = 2  # a second step sees weights the optimiser moved (AdamW state, Lisa's anchors)


def flat(ts) -> torch.Tensor:
    return torch.cat([t.detach().reshape(-1) for t in ts])


def quantised_layers(model: nn.Module) -> dict[str, nn.Module]:
    import bitsandbytes as bnb

    return {n: m for n, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit)}


def randomise_lora_b(model: nn.Module, seed: int = 1) -> None:
    # LoRA B starts at 0, where d/dA = 0: non-zero B lets every LoRA tensor take a gradient
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in trainable_parameters(model):
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)


def fp32_twin(model_cfg, nf4: nn.Module, *, dequantised: bool = True) -> nn.Module:
    """The fp32 model with nf4's LoRA tensors; base weights dequantised from nf4's 4-bit
    ones (or, with dequantised=False, the original fp32 weights nf4 was quantised from)."""
    from bitsandbytes.functional import dequantize_4bit

    fp32, _ = load_model(model_cfg, with_lora=False)
    modules = dict(fp32.named_modules())
    if dequantised:
        for name, layer in quantised_layers(nf4.get_base_model()).items():
            w = dequantize_4bit(layer.weight.data, layer.weight.quant_state).float()
            modules[name.replace(".base_layer", "")].weight.data.copy_(w)
    twin = apply_lora(fp32, model_cfg.lora)
    lora = dict(trainable_parameters(nf4))
    with torch.no_grad():
        for name, p in trainable_parameters(twin):
            p.copy_(lora[name])
    return twin


def frozen_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every non-LoRA tensor: parameters (the packed 4-bit weights among them), buffers and
    the 4-bit layers' quantisation constants (absmax, double-quant state), copied to the CPU:
    Lightning's teardown moves the module to the CPU after fit, so a state read on cuda:0
    before training is compared with one read on the CPU after it (torch.equal across
    devices raises; tests/test_gpu.py)."""
    out = {n: t.detach().cpu().clone() for n, t in model.state_dict().items() if "lora_" not in n}
    for name, layer in quantised_layers(model).items():
        qs = layer.weight.quant_state
        out[f"{name}.absmax"] = qs.absmax.cpu().clone()
        if qs.state2 is not None:
            out[f"{name}.absmax2"] = qs.state2.absmax.cpu().clone()
    return out


def _align(method: AlignMethod, **settings) -> Callable:
    def configure(cfg: Config) -> None:
        a = cfg.method.align
        a.method, a.weight_decay, a.rho = method, 0.0, 0.5  # rho: g_h' differs clearly from g_h
        for key, value in settings.items():
            setattr(a, key, value)

    return configure


def _finetune(method: FinetuneMethod, weighting: Weighting) -> Callable:
    def configure(cfg: Config) -> None:
        f = cfg.method.finetune
        f.method, f.weighting, f.weight_decay = method, weighting, 0.0
        f.lisa = LisaConfig(rho=0.5, align_steps=1, user_steps=1, min_cycles=1, proximal_after=0.0)

    return configure


def _lisa(model: nn.Module, cfg: Config) -> LisaFinetuneModule:
    return finetune_module(LisaFinetuneModule, model, cfg, max_steps=QLORA_STEPS)


# (configure the config, build the module, the items of QLORA_STEPS steps)
QLORA_CASES = {
    "align-sft": (_align(AlignMethod.SFT), build_align_module, None),
    "align-booster": (_align(AlignMethod.BOOSTER, lambda_mode=LambdaMode.CONSTANT, lambda2=0.0),
                      build_align_module, None),
    "align-antibody": (_align(AlignMethod.ANTIBODY), build_align_module, None),
    "align-vaccine": (_align(AlignMethod.VACCINE), build_align_module, None),
    "align-repnoise": (_align(AlignMethod.REPNOISE), build_align_module, None),
    "finetune-sft": (_finetune(FinetuneMethod.SFT, Weighting.UNIFORM), build_finetune_module, None),
    "finetune-antibody": (_finetune(FinetuneMethod.ANTIBODY, Weighting.LIKELIHOOD_RATIO),
                          build_finetune_module, None),
    "finetune-lisa": (_finetune(FinetuneMethod.LISA, Weighting.UNIFORM), _lisa, "lisa"),
}


def _case_items(case: str, module, steps: int) -> list[dict]:
    if QLORA_CASES[case][2] == "lisa":  # guide and user batches, as the Lisa plan orders them
        return lisa_items(module.stream_plan, steps)
    make = align_item if case.startswith("align") else finetune_item
    return [make(0, position) for position in range(steps)]


def train_case(case: str, model: nn.Module, tiny_cfg: Config, root, steps: int = QLORA_STEPS,
               **trainer_kwargs) -> tuple[list[torch.Tensor], object]:
    """`steps` steps of `case` on `model`: each step's flattened gradient as the optimiser
    received it, and the module."""
    configure, build, _ = QLORA_CASES[case]
    cfg = copy.deepcopy(tiny_cfg)
    configure(cfg)
    model.train()
    module = build(model, cfg)
    cap = GradCapture()
    t = trainer(steps, root, callbacks=[cap], **trainer_kwargs)
    t.fit(module, train_dataloaders=list_loader(_case_items(case, module, steps)))
    assert t.global_step == steps and module.skipped_steps == 0
    return [flat(g) for g in cap.grads], module


# ---------------------------------------------------------------------------- figures
@contextlib.contextmanager
def saved_figures() -> Iterator[dict[str, object]]:
    """Every matplotlib figure saved inside the block, by the file name it was saved to:
    the figure object outlives the plt.close() of the code that drew it, so a test reads
    what was drawn (bars, histograms, labels) instead of only finding a file."""
    from matplotlib.figure import Figure

    figures: dict[str, object] = {}
    real = Figure.savefig

    def savefig(self, fname, *args, **kwargs):
        figures[Path(fname).name] = self
        return real(self, fname, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Figure, "savefig", savefig)
        yield figures


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) in pixels of a PNG file, after checking that it is one (signature and
    IHDR header) and that it decodes whole to that size."""
    import matplotlib.image

    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", f"{path} is not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    assert matplotlib.image.imread(path).shape[:2] == (height, width), f"{path} does not decode"
    return width, height


def step_histogram(outline) -> tuple[np.ndarray, np.ndarray]:
    """(left bin edges, counts) drawn by ``ax.hist(..., histtype="step")``: its outline
    polygon runs (e0, 0), then (e_i, c_i), (e_i+1, c_i) for each bin, then (e_n, 0)."""
    xy = outline.get_xy()
    return xy[1:-1:2, 0], xy[1:-1:2, 1]


def answer_token_logprobs(model, batch) -> list[torch.Tensor]:
    """Per row, log p of each answer token (labels != -100), by a loop over positions: an
    independent check of the gathers the loss code does."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    out = []
    for b in range(logits.shape[0]):
        row = [torch.log_softmax(logits[b, t].float(), -1)[batch["labels"][b, t + 1]]
               for t in range(logits.shape[1] - 1) if batch["labels"][b, t + 1] != -100]
        out.append(torch.stack(row))
    return out
