"""RepNoise alignment baseline (Rosati et al. 2024, "Representation Noising").

Per micro-batch, with the alignment-stage item {"align": batch, "harmful": batch, "position"}:

    loss = L_retain - alpha * log(1 + L_harm) + beta * MMD_noise

- L_retain: token-mean NLL of the harmless stream. Here that stream is the alignment split
  ``item["align"]``: every alignment answer is harmless (refusals to harmful prompts,
  helpful answers to benign ones), and the Booster/Antibody baselines retain on the same data.
- L_harm: NLL of the harmful answers of ``item["harmful"]`` (labels != -100). With
  ``logit_lens`` (released loss) it is (CE of the final logits + sum over every entry h of
  ``hidden_states`` of CE(head(final_norm(h)))) / len(hidden_states); otherwise the final CE
  alone. The log makes the ascent bounded: its gradient shrinks as L_harm grows.
- MMD_noise: mean over the decoder layers of the multi-kernel MMD (methods/mmd.py) between
  the harmful batch's hidden states and Gaussian noise, both masked to the answer tokens and
  flattened per row to [B, L*D].

Facts of the released code (``representation_noising/loss.py``) and what we do instead
(docs/method.md ("RepNoise")):

- MMD inputs: the released code hooks each layer's MLP output; the paper speaks of hidden
  states. We use transformers' ``hidden_states[1:]``: each decoder layer's output, the last
  one read after the final norm (transformers returns it so).
- Masks (``mask``): released, the covered tokens are the positions where row i of the
  harmful batch differs from row i of the harmless one; by default (``answer``) the batch's
  own labels instead (our batches are not row-paired). ``differing`` runs the released rule
  (``Selection``), with the released masked CE: logits of an uncovered position are zeroed,
  so the first covered token costs log V with no gradient, and token id 0 is never a target;
  it keeps to each row's own tokens (the released mask also covers padding) and its labels
  are exact (the BO copy rounds them to bf16: docs/fidelity.md, finding 4). The MMD mask is
  unshifted (positions that hold a covered token, as in the released code); the CE terms use
  the usual shift (position t predicts token t + 1), as losses.py does.
- Logit lens: every hidden state goes through the final norm, including the last one, which
  transformers already normalised (so does the released code); only the answer positions are
  gathered before norm + head, and each layer's head is recomputed in the backward pass
  (activation checkpointing), so the graph keeps [n_answer, D] per layer, not [B, L, V].
- Noise: released ``torch.randn_like`` from the global RNG; here float32 noise from a
  ``torch.Generator`` seeded by (run.seed, item position), so a resumed run draws the same
  noise as an uninterrupted one. Draw contract: one ``randn(h.shape)`` per decoder layer, in
  layer order, on the device of the hidden states (CPU and CUDA streams differ).
- Passes: two forward/backward passes, harmful (with hidden states) then harmless; each part
  is back-propagated right after its forward (the gradients add up to that of the total), so
  the harmful graph is freed before the retain forward and DDP sees one backward per forward.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from antibody.config.baselines import RepNoiseConfig, RepNoiseMask
from antibody.config.schema import AlignStageConfig
from antibody.methods.base import StageModule
from antibody.methods.losses import IGNORE_INDEX, per_sequence_nll, token_mean_nll
from antibody.methods.mmd import multi_kernel_mmd
from antibody.models.errors import ModelError

# attribute names of the decoder's final norm across architectures: Llama/Qwen/Gemma/Mistral
# ("norm"), Phi ("final_layernorm"), GPT-2/Falcon/Bloom ("ln_f"), OPT ("final_layer_norm")
_FINAL_NORM_NAMES = ("norm", "final_layernorm", "ln_f", "final_layer_norm")


def _base_model(model: nn.Module) -> nn.Module:
    """The transformers model under a peft wrapper (the model itself otherwise)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def logit_lens_modules(model: nn.Module) -> tuple[nn.Module, nn.Module]:
    """(final norm of the decoder, output head) of a causal LM, through peft if wrapped."""
    base = _base_model(model)
    get_head = getattr(base, "get_output_embeddings", None)
    head = get_head() if callable(get_head) else None
    get_decoder = getattr(base, "get_decoder", None)
    decoder = get_decoder() if callable(get_decoder) else None
    norm = None
    if decoder is not None:
        norm = next(
            (m for n in _FINAL_NORM_NAMES if isinstance(m := getattr(decoder, n, None), nn.Module)), None
        )
    if head is None or norm is None:
        children = [] if decoder is None else [n for n, _ in decoder.named_children()]
        raise ModelError(
            f"RepNoise's logit lens needs the final norm and the output head of {type(base).__name__}; "
            f"found head={type(head).__name__ if head is not None else None}, "
            f"decoder={type(decoder).__name__ if decoder is not None else None} with children {children} "
            f"(none named {', '.join(_FINAL_NORM_NAMES)}). Set method.align.repnoise.logit_lens=false "
            "to use the final-layer harmful loss only"
        )
    return norm, head


def noise_seed(seed: int, position: int) -> int:
    """Seed of the noise of stream item ``position`` (a pure function: resume-safe).

    Hashed rather than, say, seed * K + position so that neighbouring runs and positions get
    unrelated streams.
    """
    digest = hashlib.blake2b(f"repnoise-noise:{int(seed)}:{int(position)}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1  # manual_seed takes a non-negative 63-bit int


def draw_noise(hidden: Sequence[Tensor], seed: int) -> list[Tensor]:
    """The float32 Gaussian noise paired with each tensor of ``hidden`` (the draw contract)."""
    device = hidden[0].device
    gen = torch.Generator(device=device).manual_seed(seed)
    return [
        torch.randn(h.shape, generator=gen, dtype=torch.float32, device=device).to(h.device) for h in hidden
    ]


def noise_mmd(
    hidden: Sequence[Tensor], answer_mask: Tensor, noise: Sequence[Tensor], kernel_num: int, kernel_mul: float
) -> Tensor:
    """Mean over layers of MMD(masked hidden states, equally masked noise), rows as [L*D] vectors.

    Masked positions are zero in both samples, so they add nothing to any distance.
    """
    total = hidden[0].new_zeros((), dtype=torch.float32)
    for h, z in zip(hidden, noise, strict=True):
        m = answer_mask.to(device=h.device, dtype=torch.float32).unsqueeze(-1)
        x = (h.float() * m).flatten(1)
        y = (z * m).flatten(1)
        total = total + multi_kernel_mmd(x, y, kernel_num, kernel_mul)
    return total / len(hidden)


class Selection(NamedTuple):
    """The tokens one batch's RepNoise terms read."""

    labels: Tensor  # [B, L] targets of the CE terms, -100 elsewhere
    covered: Tensor  # [B, L] bool: the positions the MMD reads (unshifted)
    # [B, L] bool or None: positions whose logits the released masked CE zeroes (the token
    # after one costs log V with no gradient); None: a plain CE
    zeroed: Optional[Tensor] = None


def answer_selection(batch: Mapping[str, Tensor]) -> Selection:
    """The batch's own answer tokens (``mask=answer``)."""
    labels = batch["labels"]
    return Selection(labels, labels != IGNORE_INDEX)


def differing_selection(batch: Mapping[str, Tensor], other: Mapping[str, Tensor]) -> Selection:
    """``mask=differing``: the tokens of each row of ``batch`` that differ from the row of
    ``other`` with the same index, ``other`` cut or padded with 0 to ``batch``'s shape (BO
    ``loss_func/repnoise_loss.py:80-99, 121-122``), within the row's own tokens."""
    ids = batch["input_ids"]
    rows, length = ids.shape
    o = other["input_ids"][:rows, :length].to(ids.device)
    o = F.pad(o, (0, length - o.shape[1], 0, rows - o.shape[0]), value=0)
    covered = (ids != o) & batch["attention_mask"].bool()
    # released: a target equal to 0 becomes -100 (BO repnoise_loss.py:71)
    labels = ids.masked_fill(~covered | (ids == 0), IGNORE_INDEX)
    return Selection(labels, covered, ~covered)


def _flat_ce(ce: Tensor, flat: Optional[Tensor], vocab: int) -> Tensor:
    """Per-token CE where a zeroed logit row gives the uniform distribution's log V."""
    return ce if flat is None else torch.where(flat, torch.full_like(ce, math.log(vocab)), ce)


def selected_ce(logits: Tensor, sel: Selection) -> Tensor:
    """Token-mean CE of ``sel.labels`` (the released masked CE when ``sel.zeroed`` is set)."""
    if sel.zeroed is None:
        return per_sequence_nll(logits, sel.labels).token_mean()
    select = sel.labels[:, 1:] != IGNORE_INDEX
    ce = F.cross_entropy(logits[:, :-1][select].float(), sel.labels[:, 1:][select], reduction="none")
    ce = _flat_ce(ce, sel.zeroed[:, :-1][select], logits.shape[-1])
    return ce.sum() / select.sum().clamp_min(1).to(ce.dtype)


def _lens_nll_sum(h: Tensor, targets: Tensor, norm: nn.Module, head: nn.Module, flat: Optional[Tensor]) -> Tensor:
    logits = head(norm(h)).float()
    if flat is None:
        return F.cross_entropy(logits, targets, reduction="sum")
    return _flat_ce(F.cross_entropy(logits, targets, reduction="none"), flat, logits.shape[-1]).sum()


def logit_lens_nll(hidden: Tensor, labels: Tensor, norm: nn.Module, head: nn.Module,
                   zeroed: Optional[Tensor] = None) -> Tensor:
    """Token-mean CE of the target tokens read from one hidden state through norm + head
    (``zeroed``: as in ``Selection``).

    Only the positions that predict a target token are gathered first: the full [B, L, V]
    logits of every layer would dominate the step's memory (docs/method.md ("RepNoise")).
    """
    select = labels[:, 1:] != IGNORE_INDEX
    h = hidden[:, :-1][select]
    targets = labels[:, 1:][select].to(h.device)
    flat = None if zeroed is None else zeroed[:, :-1][select].to(h.device)
    # recomputed in backward: the graph keeps h ([n, D]) instead of the [n, V] logits
    nll = checkpoint(_lens_nll_sum, h, targets, norm, head, flat, use_reentrant=False)
    return nll / select.sum().clamp_min(1).to(nll.dtype)


class HarmfulTerms(NamedTuple):
    harmful_loss: Tensor  # L_harm, the raw mean CE (before log(1 + .))
    mmd_loss: Tensor  # MMD_noise, averaged over layers


def harmful_terms(
    model: nn.Module,
    batch: Mapping[str, Tensor],
    seed: int,
    cfg: RepNoiseConfig,
    lens: tuple[nn.Module, nn.Module] | None = None,
    sel: Selection | None = None,
) -> HarmfulTerms:
    """One forward of the harmful batch with hidden states: L_harm and MMD_noise.

    ``seed`` fixes the noise (``draw_noise``); ``lens`` = (final norm, head), looked up when
    ``cfg.logit_lens`` and not given; ``sel``: the tokens read (the answers when None).
    """
    sel = sel if sel is not None else answer_selection(batch)
    out = model(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True
    )
    states = out.hidden_states
    ce = selected_ce(out.logits, sel)
    if cfg.logit_lens:
        norm, head = lens if lens is not None else logit_lens_modules(model)
        # released: (final CE + one CE per hidden state) / number of hidden states
        lens_sum = sum(logit_lens_nll(h, sel.labels, norm, head, sel.zeroed) for h in states)
        ce = (ce + lens_sum) / len(states)
    layers = states[1:]  # decoder-layer outputs (states[0] is the embedding output)
    mmd = noise_mmd(layers, sel.covered, draw_noise(layers, seed), cfg.kernel_num, cfg.kernel_mul)
    return HarmfulTerms(ce, mmd)


_MICRO_METRICS = ("loss", "retain_loss", "harmful_loss", "mmd_loss")


class RepNoiseAlignModule(StageModule):
    """Alignment stage: L_retain - alpha log(1 + L_harm) + beta MMD_noise (see module doc)."""

    log_prefix = "align"

    def __init__(self, model: nn.Module, align: AlignStageConfig, *, seed: int):
        """``seed``: the run's seed (run.seed), which every item's noise draw starts from."""
        super().__init__(model, align, _MICRO_METRICS)
        self.settings: RepNoiseConfig = align.repnoise
        self.seed = int(seed)
        # looked up now so that a model without a findable norm fails before training starts
        self._lens = logit_lens_modules(model) if self.settings.logit_lens else None

    def noise_seed(self, position: int) -> int:
        return noise_seed(self.seed, position)

    def _accumulate_micro_batch(self, item: Mapping[str, Any]) -> None:
        s = self.settings
        harmful, harmless = item["harmful"], item["align"]
        differing = s.mask is RepNoiseMask.DIFFERING
        terms = harmful_terms(
            self.model, harmful, self.noise_seed(int(item["position"])), s, self._lens,
            differing_selection(harmful, harmless) if differing else None,
        )
        ascent = -s.alpha * torch.log1p(terms.harmful_loss) + s.beta * terms.mmd_loss
        self.manual_backward(ascent / self.accumulate)
        if differing:  # released: a masked CE over the harmless tokens that differ from the harmful row
            logits = self.model(input_ids=harmless["input_ids"], attention_mask=harmless["attention_mask"]).logits
            retain = selected_ce(logits, differing_selection(harmless, harmful))
        else:
            retain = token_mean_nll(self.model, harmless)
        self.manual_backward(retain / self.accumulate)
        self._track("loss", retain.detach() + ascent.detach())
        self._track("retain_loss", retain)
        self._track("harmful_loss", terms.harmful_loss)
        self._track("mmd_loss", terms.mmd_loss)
