"""Model access: loading, architecture roles, hooks, the forward engine, number tokens and
formats, tasks, readouts, scores, process state and fingerprints. Knows no analysis."""
