"""A local pairwise judge for AlpacaEval: a reward model scores each answer against the
reference answer to the same instruction, so a win rate needs no API.

The reward model is any single-output sequence classifier that reads (instruction, answer)
as a text pair, e.g. OpenAssistant's DeBERTa reward models (`eval.pairwise_judge_path`).
The official AlpacaEval score uses an LLM annotator instead; the evaluation also writes the
generations in the `alpaca_eval` package's input format for that (`alpaca_outputs`).
Win = the model's answer gets the higher reward; equal rewards count half (ours).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from antibody.config.errors import ConfigError

OUTPUTS_FILE = "alpaca_eval_outputs.json"


class RewardPairwiseJudge:
    def __init__(self, path: str, *, device: Optional[str] = None, max_length: int = 512, batch_size: int = 8):
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        try:
            self.model = AutoModelForSequenceClassification.from_pretrained(path).to(device).eval()
            self.tokenizer = AutoTokenizer.from_pretrained(path)
        except OSError as exc:
            raise ConfigError(f"eval.pairwise_judge_path={path!r}: cannot load a reward model ({exc})") from None
        if self.model.config.num_labels != 1:
            raise ConfigError(f"eval.pairwise_judge_path={path!r}: expected a reward model with one output, "
                              f"got num_labels={self.model.config.num_labels}")
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.path, self.device, self.max_length, self.batch_size = str(path), device, max_length, batch_size

    def rewards(self, instructions: list[str], answers: list[str]) -> list[float]:
        import torch

        out: list[float] = []
        with torch.inference_mode():
            for i in range(0, len(answers), self.batch_size):
                enc = self.tokenizer(instructions[i:i + self.batch_size], answers[i:i + self.batch_size],
                                     padding=True, truncation=True, max_length=self.max_length,
                                     return_tensors="pt").to(self.device)
                out += [float(x) for x in self.model(**enc).logits[:, 0].float().cpu()]
        return out

    def outcomes(self, instructions: list[str], answers: list[str], references: list[str]) -> list[float]:
        """1 win, 0.5 tie, 0 loss of each answer against its reference."""
        if not (len(instructions) == len(answers) == len(references)):
            raise ValueError("instructions, answers and references differ in length")
        mine, ref = self.rewards(instructions, answers), self.rewards(instructions, references)
        return [1.0 if a > b else 0.5 if a == b else 0.0 for a, b in zip(mine, ref, strict=True)]


def win_rate(outcomes: list[float]) -> dict:
    """Mean of the outcomes with its standard error (ties count half)."""
    import statistics

    n = len(outcomes)
    value = statistics.fmean(outcomes) if n else float("nan")
    stderr = statistics.stdev(outcomes) / n ** 0.5 if n > 1 else float("nan")
    return {"name": "win_rate", "value": value, "percent": 100.0 * value, "n": n, "stderr": stderr,
            "wins": sum(o == 1.0 for o in outcomes), "ties": sum(o == 0.5 for o in outcomes)}


def write_alpaca_outputs(rows: list[dict], generator: str, out_dir: Path) -> Path:
    """The generations as `alpaca_eval --model_outputs` reads them: a JSON list of
    {instruction, output, generator, dataset}."""
    path = Path(out_dir) / OUTPUTS_FILE
    data = [{"instruction": r["question"], "output": r["response"], "generator": generator,
             "dataset": r.get("category") or ""} for r in rows]
    path.write_text(json.dumps(data, indent=1, ensure_ascii=False))
    return path
