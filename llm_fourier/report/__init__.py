"""Writing results: atomic JSON/CSV/figure files, console tables (and, later, HTML)."""
