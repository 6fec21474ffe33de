"""scripts/bench_hooks.py on a tiny shape: our ratios, and a reason for each missing peer."""

import importlib.util
from importlib import metadata
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench_hooks.py"


def installed(dist: str) -> bool:
    try:
        metadata.version(dist)
    except metadata.PackageNotFoundError:
        return False
    return True


def test_tiny_run_reports_ratios_and_why_each_peer_is_missing(capsys):
    spec = importlib.util.spec_from_file_location("bench_hooks", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    result = module.main(["--layers", "2", "--d-model", "64", "--vocab", "600", "--batch", "8",
                          "--rounds", "2"])
    out = capsys.readouterr().out
    for name in ("capture", "filter"):
        assert set(result[name]) == {"wall", "cpu"} and result[name]["wall"]["median"] > 0
    for peer, dist in (("nnsight", "nnsight"), ("TransformerLens", "transformer-lens")):
        got = result["peers"][peer]
        if installed(dist):  # same rows as our capture, whatever the speed
            assert isinstance(got, str) or got["max_abs_diff"] < 1e-4
        else:  # the project never depends on the peers: say so instead of skipping silently
            assert got == f"not installed (pip install {dist}), skipped"
            assert f"{peer}: not installed (pip install {dist}), skipped" in out
