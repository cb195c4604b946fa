# Two commands for a new user: `make demo` and `make test`. Each sets itself up first.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# On a machine without an NVIDIA GPU, pin the CPU build of torch first so no
# multi-GB CUDA wheel is pulled in; with a GPU, pip picks the normal CUDA build.
CPU_TORCH ?= torch==2.13.0
ROOT   ?= ./sleepsound-demo
DEMO_ARGS ?=

CHROMIUM ?= /usr/bin/chromium
# Two pytest-xdist workers: the Ray and Prefect tests keep one worker (and one Ray session) between
# them while the others run beside them; the serial suite left a core idle about 40% of the time.
PYTEST_WORKERS ?= -n 2 --dist loadgroup

.PHONY: setup demo test test-fast clean-demo chromium espeak

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
		echo "NVIDIA GPU found: installing the default (CUDA) torch"; \
		$(PY) -m pip install -q -e ".[test,bench]"; \
	else \
		echo "No GPU: installing $(CPU_TORCH) (CPU build) and pinning it"; \
		$(PY) -m pip install -q "$(CPU_TORCH)" && \
		echo "$(CPU_TORCH)" > $(VENV)/constraints.txt && \
		$(PY) -m pip install -q -c $(VENV)/constraints.txt -e ".[test,bench]"; \
	fi
	@touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/sleepsound demo --root $(ROOT) $(DEMO_ARGS)

# The report's browser tests drive Debian's chromium through Playwright (never `playwright install`).
chromium:
	@if [ ! -x $(CHROMIUM) ]; then \
		if [ "$$(id -u)" = 0 ]; then \
			echo "installing chromium for the report's browser tests"; \
			apt-get update -qq && apt-get install -y -qq chromium >/dev/null; \
		else \
			echo "The report's browser tests need $(CHROMIUM): run 'sudo apt-get install -y chromium' (Debian/Ubuntu), then 'make test' again." >&2; \
			exit 2; \
		fi; \
	fi

# Styled nights voice their TVs and sleep talk with Debian's espeak-ng where it is installed (else the
# built-in formant synthesiser): install it so the tests cover the speech the generator prefers.
espeak:
	@if ! command -v espeak-ng >/dev/null 2>&1; then \
		if [ "$$(id -u)" = 0 ]; then \
			echo "installing espeak-ng for the generator's TV speech"; \
			apt-get install -y -qq espeak-ng >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq espeak-ng >/dev/null; }; \
		else \
			echo "espeak-ng is not installed: styled nights use the built-in speech, and its test is skipped ('sudo apt-get install -y espeak-ng')." >&2; \
		fi; \
	fi

test: $(STAMP) chromium espeak
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q $(PYTEST_WORKERS)

# The unit tests alone (no Ray, no Prefect flows: 974 of the 1,005 tests on 2026-12-06), for the edit-test loop.
test-fast: $(STAMP) chromium espeak
	$(PY) -m pytest -q $(PYTEST_WORKERS) -m "not ray and not prefect"

clean-demo:
	rm -rf $(ROOT) .prefect
