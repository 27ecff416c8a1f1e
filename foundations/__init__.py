"""Foundations: the foundations of large language models in JAX, from text to scaling laws."""

__version__ = "0.1.0"
