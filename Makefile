# Everything bootstraps itself: uv (if missing), the locked environment in .venv, then the job.
PYTHON ?= python3
UV_VERSION := 0.13.9
UV := $(PYTHON) -m uv
RUN := $(UV) run --locked --all-extras
export MAX_JOBS ?= 2
# make test's pytest-xdist workers; each test file runs in one of them (tests/conftest.py)
TEST_WORKERS ?= 2

.PHONY: env test lint format demo clean

env: .venv/.synced

.venv/.synced: pyproject.toml uv.lock
	@$(UV) --version >/dev/null 2>&1 || $(PYTHON) -m pip install --quiet "uv==$(UV_VERSION)"
	$(UV) sync --locked --all-extras --compile-bytecode
	@touch $@

lint: env
	$(RUN) ruff check .
	$(RUN) ruff format --check .

format: env
	$(RUN) ruff check --fix .
	$(RUN) ruff format .

test: lint
	$(RUN) pytest -n $(TEST_WORKERS)

demo: env
	$(RUN) python tools/demo.py

clean:
	rm -rf .venv work_dirs .pytest_cache
