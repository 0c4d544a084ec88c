"""Sparsity Explorer's engine: load a model, score its weights, allocate sparsity per block, prune, measure.

The modules read top-down as the pipeline: models → data → scores → allocation → prune → evaluate →
search → structural. Nothing here imports the history (storage), the web app (ui, gradio) or the command line
(cli), which are layers over it; dsa_core/__main__.py, the launcher of `python -m dsa_core`, is the one exception.
"""
