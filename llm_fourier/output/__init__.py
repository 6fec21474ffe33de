"""Low-level output helpers used by everything that writes results: atomic files with the
user's umask, console tables, matplotlib figures, HTML fragments and the run folder."""
