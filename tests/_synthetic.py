"""Synthetic models, batches and streams for the training-stage tests.

Batches follow the DataModule's batch contract (right padding, labels -100 on prompt
and padding, a separately padded refusal view); streams honour the resume contract:
item ``position`` p is a pure function of (seed, p), and the DataModule restarts at the
LightningModule's ``stream_position`` (antibody.data.streams.StreamConsumer).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from typing import Any, Optional

import lightning as L
import torch
from peft import LoraConfig, get_peft_model
from torch import Tensor, nn
from torch.utils.data import DataLoader, IterableDataset
from transformers import LlamaConfig, LlamaForCausalLM

from antibody.data.streams import StreamConsumer
from antibody.methods.registry import detector_window
from antibody.methods.weighted_finetune import WeightedFinetuneModule

# The tiny models gain nothing from intra-op threads, and on the shared 2-core machine
# OpenMP threads contending with other processes made each pass ~100x slower.
torch.set_num_threads(1)

VOCAB = 96
PAD = 0
EOS = 1
IGNORE = -100


def tiny_lora_model(seed: int = 0, b_std: float = 0.05) -> nn.Module:
    """Seeded 2-layer Llama + LoRA on q/v; LoRA B drawn non-zero so that d/dA != 0."""
    torch.manual_seed(seed)
    base = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=VOCAB,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=64,
            max_position_embeddings=128,
            pad_token_id=PAD,
            eos_token_id=EOS,
            bos_token_id=None,
        )
    )
    model = get_peft_model(
        base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)
    )
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * b_std)
    return model


def clone_model(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model)


def _pack(
    prompts: list[Tensor], answers: list[Tensor], length: Optional[int]
) -> tuple[Tensor, Tensor, Tensor]:
    seqs = [torch.cat([p, a]) for p, a in zip(prompts, answers, strict=True)]
    width = length or max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), PAD, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    labels = torch.full((len(seqs), width), IGNORE, dtype=torch.long)
    for i, (p, s) in enumerate(zip(prompts, seqs, strict=True)):
        ids[i, : len(s)] = s
        mask[i, : len(s)] = 1
        labels[i, len(p) : len(s)] = s[len(p) :]
    return ids, mask, labels


def make_batch(
    gen: torch.Generator,
    harmful: Sequence[bool],
    first_index: int = 0,
    fixed_lengths: bool = False,
    length: Optional[int] = None,
) -> dict[str, Any]:
    """A user batch: random prompt, response + EOS, refusal + EOS (contract keys)."""
    n = len(harmful)

    def tokens(lo: int, hi: int) -> Tensor:
        size = hi if fixed_lengths else int(torch.randint(lo, hi + 1, (1,), generator=gen))
        return torch.randint(2, VOCAB, (size,), generator=gen)

    eos = torch.tensor([EOS])
    prompts = [tokens(3, 7) for _ in range(n)]
    answers = [torch.cat([tokens(2, 6), eos]) for _ in range(n)]
    refusals = [torch.cat([tokens(2, 4), eos]) for _ in range(n)]
    ids, mask, labels = _pack(prompts, answers, length)
    r_ids, r_mask, r_labels = _pack(prompts, refusals, length)
    index = torch.arange(first_index, first_index + n)
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "labels": labels,
        "refusal_input_ids": r_ids,
        "refusal_attention_mask": r_mask,
        "refusal_labels": r_labels,
        "is_harmful": torch.tensor(list(harmful), dtype=torch.bool),
        "index": index,
        "uid": [f"row-{i}" for i in index.tolist()],
        "source": ["harmful" if h else "benign" for h in harmful],
    }


def harmful_pattern(batch_size: int, position: int) -> list[bool]:
    # about a quarter harmful, always both classes in a batch of >= 2
    return [(position + i) % 4 == 0 for i in range(batch_size)]


def align_item(seed: int, position: int, batch_size: int = 3, fixed_lengths: bool = False) -> dict:
    gen = torch.Generator().manual_seed(seed * 1_000_003 + position)
    align = make_batch(gen, [i % 2 == 0 for i in range(batch_size)], position * batch_size, fixed_lengths)
    harm = make_batch(gen, [True] * batch_size, position * batch_size, fixed_lengths)
    return {"align": align, "harmful": harm, "position": position}


def finetune_item(seed: int, position: int, batch_size: int = 4, fixed_lengths: bool = False) -> dict:
    gen = torch.Generator().manual_seed(seed * 1_000_003 + position)
    batch = make_batch(gen, harmful_pattern(batch_size, position), position * batch_size, fixed_lengths)
    return {**batch, "position": position}


class SyntheticStream(IterableDataset):
    """Infinite stream of stage items starting at ``start`` (deterministic per position)."""

    def __init__(self, kind: str, start: int = 0, seed: int = 0, batch_size: int = 3):
        self.kind, self.start, self.seed, self.batch_size = kind, start, seed, batch_size

    def __iter__(self) -> Iterator[dict]:
        make = align_item if self.kind == "align" else finetune_item
        position = self.start
        while True:
            yield make(self.seed, position, self.batch_size)
            position += 1


class ListStream(IterableDataset):
    """Given items, in order (each must carry its ``position``)."""

    def __init__(self, items: list[dict]):
        self.items = items

    def __iter__(self) -> Iterator[dict]:
        return iter(self.items)


class SyntheticDataModule(L.LightningDataModule):
    """Restarts its stream at the module's ``stream_position`` (the resume contract)."""

    def __init__(self, kind: str, seed: int = 0, batch_size: int = 3):
        super().__init__()
        self.kind, self.seed, self.batch_size = kind, seed, batch_size
        self.starts: list[int] = []

    def train_dataloader(self) -> DataLoader:
        module = self.trainer.lightning_module
        start = int(module.stream_position) if isinstance(module, StreamConsumer) else 0
        self.starts.append(start)
        return DataLoader(SyntheticStream(self.kind, start, self.seed, self.batch_size), batch_size=None)


def finetune_module(cls: type[WeightedFinetuneModule], model: nn.Module, cfg: Any, **overrides: Any):
    """``cls`` (WeightedFinetuneModule or a subclass) given what a run gives it of the whole
    ``cfg``: its stage's config and the registry's detector window, with constructor overrides."""
    return cls(model, cfg.method.finetune, **{"detector_window": detector_window(cfg), **overrides})


def list_loader(items: list[dict]) -> DataLoader:
    return DataLoader(ListStream(items), batch_size=None)


class GradCapture(L.Callback):
    """Records each trainable tensor's ``.grad`` just before every optimiser step."""

    def __init__(self) -> None:
        self.grads: list[list[Tensor]] = []

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        opt = trainer.optimizers[0]

        def hook(optimizer: Any, args: Any, kwargs: Any) -> None:
            self.grads.append([p.grad.detach().clone() for p in optimizer.param_groups[0]["params"]])

        opt.register_step_pre_hook(hook)


def trainer(
    max_steps: int, root: Any, callbacks: Sequence[L.Callback] = (), accelerator: str = "cpu", **kwargs: Any
) -> L.Trainer:
    """A quiet single-device Trainer (the CPU unless told otherwise)."""
    return L.Trainer(
        accelerator=accelerator,
        devices=1,
        max_steps=max_steps,
        logger=False,
        enable_checkpointing=any(isinstance(c, L.pytorch.callbacks.ModelCheckpoint) for c in callbacks),
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=str(root),
        callbacks=list(callbacks),
        **kwargs,
    )


# bfloat16 keeps 8 significant bits (eps 2**-8 ~ 3.9e-3); torch.testing's default rtol for
# bfloat16 is 1.6e-2. A gradient sums many rounded products, so whole vectors are compared
# by their relative norm error, at twice that.
BF16_RTOL = 1.6e-2


def assert_close_bf16(got: Tensor, want: Tensor, what: str = "", rel: float = 2 * BF16_RTOL) -> None:
    """``got`` (computed under bf16) equals the fp32 ``want`` to bf16 precision."""
    got, want = got.detach().cpu().double(), want.detach().cpu().double()
    err = float((got - want).norm() / want.norm())
    assert err <= rel, f"{what}: relative error {err:.3g} exceeds the bf16 tolerance {rel:g}"


def trainable(model: nn.Module) -> list[Tensor]:
    return [p for p in model.parameters() if p.requires_grad]


def hf_loss(model: nn.Module, batch: dict, prefix: str = "") -> Tensor:
    """Reference loss: transformers' own token-mean causal-LM loss."""
    return model(
        input_ids=batch[f"{prefix}input_ids"],
        attention_mask=batch[f"{prefix}attention_mask"],
        labels=batch[f"{prefix}labels"],
    ).loss


def concat_batches(a: dict, b: dict) -> dict:
    """Row-wise concatenation of two equally padded batches."""
    out = {}
    for k, v in a.items():
        if k == "position":  # stream bookkeeping, not row data: keep the first
            out[k] = v
        else:
            out[k] = torch.cat([v, b[k]]) if isinstance(v, Tensor) else list(v) + list(b[k])
    return out


class Killed(Exception):
    """Stands in for the death of a preempted job."""


class SaveThenKill(L.Callback):
    """Writes a checkpoint after batch ``at`` (possibly inside an accumulation window), then
    dies the way a preempted job does: with an exception out of ``fit``."""

    def __init__(self, path: Any, at: int):
        self.path, self.at = path, at

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if batch_idx == self.at:
            trainer.save_checkpoint(self.path)
            raise Killed
