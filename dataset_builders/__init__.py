"""MLLM-judged preference data for MAPLE: hard-negative mining, contrastive captioning, judging,
and the `datasets` builder that writes, publishes and loads the result.

Names are imported on first use, so a process that only builds or loads datasets (every rank of a
multi-process build, the CLI's --help) does not pay for importing the MLLM stack.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_EXPORTS = {
    "CandidateCaptioner": "interfaces",
    "PreferenceJudge": "interfaces",
    "ContrastiveCaptioner": "captioner",
    "MLLMJudge": "judge",
    "JudgeEnsemble": "judge",
    "HardNegativeMiner": "miner",
    "semdedup": "miner",
    "top_k_neighbours": "miner",
    "MaplePreferences": "builder",
    "MaplePreferencesConfig": "builder",
    "PREFERENCE_FEATURES": "builder",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from .builder import PREFERENCE_FEATURES, MaplePreferences, MaplePreferencesConfig
    from .captioner import ContrastiveCaptioner
    from .interfaces import CandidateCaptioner, PreferenceJudge
    from .judge import JudgeEnsemble, MLLMJudge
    from .miner import HardNegativeMiner, semdedup, top_k_neighbours


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
