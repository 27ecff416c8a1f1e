"""Scaling laws: fit L(N), L(D), Chinchilla's L(N, D) and IsoFLOP profiles to a sweep's results, and plot them."""

from foundations.scaling.fit import (
    bootstrap,
    bootstrap_chinchilla,
    bootstrap_isoflop,
    bootstrap_power_law,
    compute_optimal,
    confidence_intervals,
    extrapolation_check,
    fit_chinchilla,
    fit_isoflop,
    fit_loss_vs_d,
    fit_loss_vs_n,
    fit_power_law,
    isoflop_optimal,
    predict_loss,
)
from foundations.scaling.results import ResultsError, load_curve, load_results

__all__ = [
    "ResultsError", "bootstrap", "bootstrap_chinchilla", "bootstrap_isoflop", "bootstrap_power_law", "compute_optimal", "confidence_intervals",
    "extrapolation_check", "fit_chinchilla", "fit_isoflop", "fit_loss_vs_d", "fit_loss_vs_n", "fit_power_law",
    "isoflop_optimal", "load_curve", "load_results", "predict_loss",
]
