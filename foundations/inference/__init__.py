"""Inference: KV-cached generation and the sampling toolbox."""

from foundations.inference.generate import generate
from foundations.inference.sampling import process_logits

__all__ = ["generate", "process_logits"]
