"""Training objectives, chosen by `objective.kind`: clm, prefix_lm, mlm, span, electra."""

from __future__ import annotations

from foundations.objectives.base import Objective, PrefixLM
from foundations.objectives.electra import ReplacedTokenDetection
from foundations.objectives.mlm import MaskedLM
from foundations.objectives.span import SpanCorruption

OBJECTIVES = {"clm": Objective, "prefix_lm": PrefixLM, "mlm": MaskedLM, "span": SpanCorruption,
              "electra": ReplacedTokenDetection}


def make_objective(config, tokenizer) -> Objective:
    return OBJECTIVES[config.objective.kind](config, tokenizer)
