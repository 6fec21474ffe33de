from llm_fourier.entry import run

run()
