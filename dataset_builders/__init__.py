"""MLLM-judged preference data for MAPLE: hard-negative mining, contrastive captioning, judging,
and the `datasets` builder that writes, publishes and loads the result."""

from .captioner import ContrastiveCaptioner
from .interfaces import CandidateCaptioner, PreferenceJudge
from .judge import JudgeEnsemble, MLLMJudge
from .miner import HardNegativeMiner, semdedup, top_k_neighbours

__all__ = [
    "CandidateCaptioner",
    "ContrastiveCaptioner",
    "HardNegativeMiner",
    "JudgeEnsemble",
    "MLLMJudge",
    "PreferenceJudge",
    "semdedup",
    "top_k_neighbours",
]
