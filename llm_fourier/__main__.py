import sys

from llm_fourier.cli import main

sys.exit(main())
