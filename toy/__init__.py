"""Models trained from scratch: grokking models of modular arithmetic and from-scratch
adders (with transplanted number embeddings). Imports ``probes`` and ``llm_fourier``."""
