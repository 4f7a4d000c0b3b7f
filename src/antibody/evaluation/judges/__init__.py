"""Harm judges, selected by cfg.eval.judge (`JudgeKind`): keyword, tfidf, probe, beaver-dam."""

from antibody.evaluation.judges import beaver_dam, keyword, probe, tfidf  # noqa: F401  (registration)
from antibody.evaluation.judges.base import Judge, flag_scores
from antibody.evaluation.judges.beaver_dam import BeaverDamJudge
from antibody.evaluation.judges.factory import build_judge
from antibody.evaluation.judges.gated import RefusalGatedJudge
from antibody.evaluation.judges.keyword import KeywordJudge, is_refusal
from antibody.evaluation.judges.probe import ProbeJudge
from antibody.evaluation.judges.tfidf import TfidfJudge

__all__ = [
    "BeaverDamJudge",
    "Judge",
    "KeywordJudge",
    "ProbeJudge",
    "RefusalGatedJudge",
    "TfidfJudge",
    "build_judge",
    "flag_scores",
    "is_refusal",
]
