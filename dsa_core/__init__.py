"""Sparsity Explorer's engine: load a model, score its weights, allocate sparsity per block, prune, measure.

The modules read top-down as the pipeline: models → data → scores → allocation → prune → evaluate →
search → structural. Nothing here imports a UI toolkit; the web app and the CLI are thin layers over it.
"""
