"""Batch reports: a config of jobs (models x tasks x analyses x seeds), the runner that runs
them through the command registry into one folder, and the HTML page built from the
commands' own report views. Knows commands only through ``llm_fourier.commands``."""
