"""Pure Fourier math on arrays: bases, spectra, filters, sparsity measures, linear probes.

Imports numpy, torch and scikit-learn only; no model code lives here.
"""

from probes.filters import (
    FourierFilter,
    choose_tau,
    high_pass,
    keep_only,
    low_pass,
    remove_components,
    tau_window,
)
from probes.fourier import (
    FourierBasis,
    Outlier,
    Spectrum,
    coefficients,
    component_magnitudes,
    find_outliers,
    find_peaks,
    low_high_energy,
    spectrum,
)
from probes.measures import (
    cos_sin_norms,
    fcr,
    ffd,
    gini,
    key_frequencies,
    max_normalized_power,
    power_per_component,
)

__all__ = [
    "FourierBasis", "Outlier", "Spectrum", "coefficients", "component_magnitudes",
    "find_outliers", "find_peaks", "low_high_energy", "spectrum", "FourierFilter", "high_pass",
    "keep_only", "low_pass", "remove_components", "tau_window", "choose_tau", "cos_sin_norms",
    "fcr", "ffd", "gini", "key_frequencies", "max_normalized_power", "power_per_component",
]
