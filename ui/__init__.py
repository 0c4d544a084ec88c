"""The web app of Sparsity Explorer: Gradio blocks (ui/app.py lays out one ui/tab_*.py per tab, which share
ui/context.py), Plotly figure builders (ui/figures.py), and the thin layer between them and the engine: the
loaded model and its jobs (ui/workspace.py, ui/jobs.py), the formula builder's model (ui/formula.py) and saved
experiments as charts (ui/experiments.py). Start it with `python app.py`."""
