"""Answer features from a frozen causal LM (the "backbone") for the probe harm judge.

For each (prompt, answer) pair, one forward pass over prompt + answer gives
- ``pooled``: every entry of ``hidden_states`` (embeddings, then each decoder layer, so
  ``num_hidden_layers + 1``) mean-pooled over the ANSWER tokens, for a linear probe;
- ``nll``: the mean negative log-likelihood of the answer tokens given the prompt (natural
  log, nats per token), an incoherence signal. Logits at position t predict token t + 1, so
  the answer's first token is scored from the last prompt position.

Choices (ours):
- The prompt is formatted exactly as evaluation does (``format_prompt`` on a ``Record``),
  tokenised without special tokens, with ``special_prefix`` prepended where missing (as
  ``encode_pair``). A prompt over ``max_prompt_tokens`` loses its MIDDLE
  (``_truncate_middle``, the truncation training uses): the head keeps the template header
  (system turn / Alpaca preamble, a BOS where there is one) so the model reads a well-formed
  template, and the tail keeps the end of the instruction and the generation cue after which
  the answer starts.
- The answer is the first ``max_answer_tokens`` tokens of ``tokenizer(answer)``, with no EOS:
  evaluated answers are cut at max_new_tokens and may not end.
- An empty answer has no token to pool or score: its pooled vector is the hidden state of
  the LAST PROMPT token (every layer), its nll is NaN and its answer_tokens 0.
- Rows are sorted by length within a call (less padding), right-padded with the pad id (eos
  if none), and returned in input order. Log-probs are computed in float32 on the gathered
  answer-predicting positions only.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from antibody.config.schema import PromptFormat
from antibody.data.formatting import _truncate_middle, format_prompt, special_prefix
from antibody.data.records import Record
from antibody.infra.progress import task


@dataclass(frozen=True)
class EncodedAnswers:
    pooled: np.ndarray  # float32 [n_rows, n_layers + 1, hidden]
    nll: np.ndarray  # float64 [n_rows], mean NLL per answer token (nats); NaN for an empty answer
    answer_tokens: np.ndarray  # int64 [n_rows], answer tokens used (after truncation)


def cut_answer(tokenizer, answer: str, max_tokens: int) -> str:
    """The first ``max_tokens`` tokens of the answer, decoded; re-encoding the result gives
    at most ``max_tokens`` tokens (a token is dropped while a cut word re-tokenises longer
    or the cut splits a character). Used to put labelled answers in the length regime of an
    evaluation (answers cut at eval.max_new_tokens)."""
    if max_tokens < 0:
        raise ValueError(f"max_tokens={max_tokens} must be >= 0")
    ids = list(tokenizer(answer, add_special_tokens=False)["input_ids"]) if answer else []
    if len(ids) <= max_tokens:
        return answer
    for keep in range(max_tokens, 0, -1):
        text = tokenizer.decode(ids[:keep], skip_special_tokens=False, clean_up_tokenization_spaces=False)
        n = len(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else 0
        if n <= max_tokens and not text.endswith("\ufffd"):
            return text
    return ""


def _accepts_logits_to_keep(model) -> bool:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft wrapper
    return "logits_to_keep" in inspect.signature(base.forward).parameters


class AnswerEncoder:
    """Pooled answer hidden states and answer NLL from one forward pass per batch."""

    def __init__(self, model, tokenizer, *, prompt_format: PromptFormat, max_prompt_tokens: int = 64,
                 max_answer_tokens: int = 64, batch_size: int = 16):
        if max_prompt_tokens < 1 or max_answer_tokens < 0 or batch_size < 1:
            raise ValueError(f"max_prompt_tokens={max_prompt_tokens} and batch_size={batch_size} must be >= 1, "
                             f"max_answer_tokens={max_answer_tokens} >= 0")
        self.model = model
        self.tokenizer = tokenizer
        self.prompt_format = PromptFormat(prompt_format)
        self.max_prompt_tokens = max_prompt_tokens
        self.max_answer_tokens = max_answer_tokens
        self.batch_size = batch_size
        self._prefix = special_prefix(tokenizer)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if pad is None:
            raise ValueError("the tokenizer has neither a pad nor an eos token to pad batches with")
        self._pad_id = int(pad)
        self._logits_to_keep = _accepts_logits_to_keep(model)

    def prompt_ids(self, prompt: str) -> list[int]:
        record = Record(uid="judge", source="judge", instruction=prompt)
        text = format_prompt(record, self.tokenizer, self.prompt_format)
        ids = list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        if self._prefix and ids[: len(self._prefix)] != self._prefix:
            ids = self._prefix + ids
        if len(ids) > self.max_prompt_tokens:
            ids = _truncate_middle(ids, self.max_prompt_tokens)
        if not ids:
            raise ValueError("the formatted prompt has no tokens")
        return ids

    def answer_ids(self, answer: str) -> list[int]:
        if not answer:
            return []
        return list(self.tokenizer(answer, add_special_tokens=False)["input_ids"])[: self.max_answer_tokens]

    def cut_answer(self, answer: str, max_tokens: int) -> str:
        return cut_answer(self.tokenizer, answer, max_tokens)

    def encode(self, prompts: list[str], answers: list[str]) -> EncodedAnswers:
        if len(prompts) != len(answers):
            raise ValueError(f"{len(prompts)} prompts but {len(answers)} answers")
        n = len(prompts)
        nll = np.full(n, np.nan, dtype=np.float64)
        counts = np.zeros(n, dtype=np.int64)
        if n == 0:
            config = self.model.config.get_text_config()
            shape = (0, config.num_hidden_layers + 1, config.hidden_size)
            return EncodedAnswers(np.zeros(shape, dtype=np.float32), nll, counts)
        pooled = None  # allocated from the first batch's hidden states
        pairs = [(self.prompt_ids(p), self.answer_ids(a)) for p, a in zip(prompts, answers, strict=True)]
        order = sorted(range(n), key=lambda i: -(len(pairs[i][0]) + len(pairs[i][1])))
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.inference_mode(), task("encode answers", total=n) as bar:
                for start in range(0, n, self.batch_size):
                    idx = order[start : start + self.batch_size]
                    rows_pooled, rows_nll = self._batch([pairs[i] for i in idx])
                    if pooled is None:
                        pooled = np.zeros((n, *rows_pooled.shape[1:]), dtype=np.float32)
                    pooled[idx] = rows_pooled
                    nll[idx] = rows_nll
                    counts[idx] = [len(pairs[i][1]) for i in idx]
                    bar.advance(len(idx))
        finally:
            self.model.train(was_training)
        return EncodedAnswers(pooled=pooled, nll=nll, answer_tokens=counts)

    def _batch(self, pairs: list[tuple[list[int], list[int]]]) -> tuple[np.ndarray, np.ndarray]:
        device = next(self.model.parameters()).device
        b = len(pairs)
        width = max(len(p) + len(a) for p, a in pairs)
        ids = torch.full((b, width), self._pad_id, dtype=torch.long)
        mask = torch.zeros((b, width), dtype=torch.long)
        weights = torch.zeros((b, width), dtype=torch.float32)  # pooling weights per position
        pred_rows, pred_pos, targets = [], [], []
        for row, (p, a) in enumerate(pairs):
            seq = p + a
            ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
            mask[row, : len(seq)] = 1
            if a:
                weights[row, len(p) : len(seq)] = 1.0 / len(a)
                pred_rows += [row] * len(a)
                pred_pos += range(len(p) - 1, len(seq) - 1)  # position t predicts token t + 1
                targets += a
            else:
                weights[row, len(p) - 1] = 1.0  # empty answer: the last prompt token
        kwargs = {}
        first = min(pred_pos) if pred_pos else width - 1
        if self._logits_to_keep:  # logits only from the first answer-predicting position on
            kwargs["logits_to_keep"] = width - first
        else:
            first = 0
        out = self.model(input_ids=ids.to(device), attention_mask=mask.to(device),
                         output_hidden_states=True, use_cache=False, **kwargs)
        weights = weights.to(device)
        pooled = torch.stack([torch.einsum("bt,bth->bh", weights, h.float()) for h in out.hidden_states], dim=1)
        nll = torch.full((b,), float("nan"), dtype=torch.float64)
        if targets:
            rows = torch.tensor(pred_rows, dtype=torch.long, device=device)
            pos = torch.tensor(pred_pos, dtype=torch.long, device=device) - first
            logits = out.logits[rows, pos].float()  # [n_answer_tokens, vocab]
            token_nll = F.cross_entropy(logits, torch.tensor(targets, dtype=torch.long, device=device),
                                        reduction="none").double()
            sums = torch.zeros(b, dtype=torch.float64, device=device).index_add_(0, rows, token_nll)
            lengths = torch.tensor([len(a) for _, a in pairs], dtype=torch.float64, device=device)
            has = lengths > 0
            nll[has.cpu()] = (sums[has] / lengths[has]).cpu()
        return pooled.cpu().numpy(), nll.numpy()
