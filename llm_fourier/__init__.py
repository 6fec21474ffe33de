"""The LLM side of llm-fourier: load Hugging Face causal LMs, hook their layers, read module
outputs through the number-token unembedding, take Fourier spectra and run filter ablations.

Imports ``probes``; never imports ``toy``.
"""

from llm_fourier.errors import UserError

__all__ = ["UserError"]
__version__ = "0.1.0"
