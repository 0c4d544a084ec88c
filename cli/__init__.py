"""The command line of Sparsity Explorer: `python -m dsa_core <command>` or, installed, `sparsity-explorer <command>`
(cli/main.py parses and dispatches; one module per command family: search.py, structural.py, export.py).

A thin layer over the engine (dsa_core) and the history (storage): it parses options into the engine's
configuration objects, runs them and prints a table or one JSON object. The engine never imports it.
"""
