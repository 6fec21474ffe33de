"""Probe and ablate Llama end to end (a + b, operands 0..260, few-shot prompts).

    python scripts/probe_llama.py [MODEL] [--out runs/llama] [--limit 500] [--shots 4]

MODEL is a hub id or a local folder (default: meta-llama/Meta-Llama-3-8B, whose tokenizer
keeps 0..999 as single tokens and gets the number lens; Llama-2 splits digits and gets the
digit lens and digit filters on whole answers).
The model was not fine-tuned on the task, so prompts carry 4 solved examples by default, as
the paper does with GPT-J and Phi-2. Loads with device_map "auto" on a GPU. Without the
weights it ends with one sentence saying how to pass a local folder (exit code 2).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from probe_gpt2 import run  # noqa: E402

if __name__ == "__main__":
    sys.exit(run("meta-llama/Meta-Llama-3-8B", "runs/llama", 4))
