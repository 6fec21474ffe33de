"""Analyses: functions from a model and its prompts to numbers (lens, ablations, whole
answers, digit probes, hidden-state probes, patching, Fourier neurons, embeddings,
fine-tuning). They run the model only through ``llm_fourier.model``; commands save them."""
