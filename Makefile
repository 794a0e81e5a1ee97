# MegaRouter: `make run` starts the product, `make test` runs the checks and tests.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed

.PHONY: run credentials test lint typecheck lock clean install bench chaos budget-exactness api-fuzz profile

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(PY) scripts/prepare.py
	$(PY) scripts/run_stack.py

# The console URL, login and demo key `make run` printed (kept in var/credentials.json).
credentials: $(STAMP)
	@$(PY) scripts/prepare.py --show

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

typecheck: $(STAMP)
	$(VENV)/bin/mypy

test: $(STAMP) lint
	$(PY) manage.py check
	$(PY) manage.py makemigrations --check --dry-run
	$(VENV)/bin/pytest $(PYTEST_ARGS)

# Benchmarks and reliability scenarios (docs/performance.md). BENCH_QUICK=1 for a short run.
# LiteLLM, for the comparison, lives in virtualenvs of its own (not a project dependency):
# the pinned release, and the newest release the registry serves (upgraded on every run).
bench/litellm-venv/bin/litellm:
	$(PYTHON) -m venv bench/litellm-venv
	bench/litellm-venv/bin/pip install --quiet 'litellm[proxy]==1.108.7'

bench/litellm-latest-venv/bin/pip:
	$(PYTHON) -m venv bench/litellm-latest-venv

bench: $(STAMP) bench/litellm-venv/bin/litellm bench/litellm-latest-venv/bin/pip
	bench/litellm-latest-venv/bin/pip install --quiet --upgrade 'litellm[proxy]'
	$(PY) bench/run.py $(BENCH_ARGS)

chaos: $(STAMP)
	$(PY) bench/chaos.py $(CHAOS_ARGS)

budget-exactness: $(STAMP)
	$(PY) bench/budget_exactness.py $(BUDGET_ARGS)

api-fuzz: $(STAMP)
	$(PY) bench/api_fuzz.py $(FUZZ_ARGS)

profile: $(STAMP)
	$(PY) bench/profile.py $(PROFILE_ARGS)

# Re-resolve every dependency to the newest allowed versions and pin them.
lock:
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/pip install --quiet --upgrade pip
	.lock-venv/bin/pip install --quiet -e '.[dev]'
	(echo "# Exact versions for every install (make uses: pip install -c constraints.txt)."; \
	 echo "# Regenerate with: make lock"; \
	 .lock-venv/bin/pip freeze --exclude-editable | grep -v '^megarouter') > constraints.txt
	rm -rf .lock-venv

clean:
	rm -rf $(VENV) var .pytest_cache .ruff_cache .mypy_cache
