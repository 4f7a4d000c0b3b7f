"""Judging the answers of a predictions file: harm score, verdict and HS+'s incoherence.

Generation is the expensive part of an evaluation; judging is cheap and changes as the
instrument improves. So a row keeps its generated answer for good, while its judgement
(`judge`, `judge_score`, `verdict`, `incoherent`, `answer_nll`, `incoherence_rule`,
`judge_threshold`) is redone from the stored question and answer whenever the file was
judged by another judge, rule or threshold. Earlier scores are kept per judge in `scores_by_judge`, so a change of judge can
be compared answer by answer (the judge-change report of the demo reads them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from antibody.evaluation import metrics as M
from antibody.evaluation.incoherence import LossIncoherence
from antibody.evaluation.judges.base import Judge, judge_id


@dataclass
class RowScorer:
    judge: Judge
    threshold: float
    loss: Optional[LossIncoherence] = None  # None: Booster's repeat rule only

    @property
    def rule(self) -> str:
        return "repeat" if self.loss is None else f"repeat_or_loss>{self.loss.threshold:.4f}"

    def stale(self, row: dict) -> bool:
        # the threshold too: the stored verdict feeds the paired comparisons
        return (row.get("judge") != judge_id(self.judge) or row.get("incoherence_rule") != self.rule
                or row.get("judge_threshold") != self.threshold)

    def score(self, rows: list[dict]) -> None:
        """(Re)judge `rows` in place; each needs `question` and `response`."""
        if not rows:
            return
        questions = [r["question"] for r in rows]
        responses = [r["response"] for r in rows]
        scores = self.judge.score(questions, responses)
        verdicts = self.judge.flag(scores, self.threshold)
        nlls = self.loss.nll(questions, responses) if self.loss is not None else [None] * len(rows)
        new_id = judge_id(self.judge)
        for row, score, verdict, nll in zip(rows, scores, verdicts, nlls, strict=True):
            history = dict(row.get("scores_by_judge") or {})
            if row.get("judge") and row.get("judge_score") is not None:
                history[row["judge"]] = row["judge_score"]
            history[new_id] = float(score)
            repeat = M.is_incoherent(row["response"])
            loss_flag = self.loss.is_incoherent(nll) if self.loss is not None else False
            row.update(judge=new_id, judge_score=float(score), verdict=bool(verdict), scores_by_judge=history,
                       incoherent_repeat=repeat, answer_nll=nll, incoherent=repeat or loss_flag,
                       incoherence_rule=self.rule, judge_threshold=self.threshold)

    def refresh(self, rows: list[dict]) -> int:
        """Re-judge the stale rows; returns how many changed."""
        stale = [r for r in rows if self.stale(r)]
        self.score(stale)
        return len(stale)

    def report(self) -> dict:
        out = {"incoherence_rule": self.rule}
        if self.loss is not None:
            out["incoherence"] = self.loss.report()
        return out
