# The handful of commands people type. Every target does its own set-up.
VENV ?= .venv
PY := $(VENV)/bin/python
SETUP_STAMP := $(VENV)/.xpro-installed

.PHONY: setup test test-fast test-kernel lint demo bench bench-agent clean

$(SETUP_STAMP): pyproject.toml scripts/setup.sh
	bash scripts/setup.sh

setup: ## apt packages, kernel headers, bpffs, .venv with bcc visible
	bash scripts/setup.sh

test: $(SETUP_STAMP) ## every test: fast, kernel, netns and slow tiers (what CI runs)
	bash scripts/test.sh

test-fast: $(SETUP_STAMP) ## pure/unit tests only (seconds)
	$(PY) -m pytest -q -m "not kernel and not netns and not slow"

test-kernel: $(SETUP_STAMP) ## only tests that load XDP programs or use namespaces
	$(PY) -m pytest -q -m "kernel or netns"

lint: $(SETUP_STAMP) ## ruff (lint and format), mypy (strict where pyproject says), shellcheck, ansible-lint
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy xpro_mesh
	$(VENV)/bin/mypy tests
	shellcheck scripts/*.sh
	cd deploy && ../$(VENV)/bin/ansible-lint --profile production --offline

demo: $(SETUP_STAMP) ## the main job (see README)
	bash scripts/demo.sh

bench: $(SETUP_STAMP) ## the data path: ns/packet ratios, the agent's slot I/O at 100k pairs (root)
	bash scripts/bench.sh

bench-agent: $(SETUP_STAMP) ## the agent: sync cycle at 10k/100k/1M pairs, 5 real agents
	bash scripts/bench-agent.sh

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
