# Two commands for a fresh clone: `make demo` and `make test`. Each sets up what it needs first.
VENV ?= .venv
PYTHON ?= python3
STAMP := $(VENV)/.installed-stamp

# the suite's tests mostly wait on servers and subprocesses: two pytest-xdist workers take it
# from ~14 to ~8 minutes on 2 cores (TEST_WORKERS=0 runs it in one process)
TEST_WORKERS ?= 2

AGENTS_VENV ?= .venv-agents
AGENTS_STAMP := $(AGENTS_VENV)/.installed-stamp

.PHONY: demo test quick-test node-deps

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

# agent frameworks (Swarm, Agents SDK) pin openai versions of their own: a venv of their own
$(AGENTS_STAMP): tests/agents/requirements.txt
	$(PYTHON) -m venv $(AGENTS_VENV)
	$(AGENTS_VENV)/bin/python -m pip install --quiet -r tests/agents/requirements.txt
	touch $(AGENTS_STAMP)

# the Node openai package, for the any-language replay tests (skipped where npm is missing)
node-deps:
	@if command -v npm >/dev/null 2>&1; then \
		cd tests/node && npm install --no-audit --no-fund --loglevel=error; \
	else echo "npm not found: the Node tests will be skipped"; fi

demo: $(STAMP)
	$(VENV)/bin/llmtap demo

test: $(STAMP) $(AGENTS_STAMP) node-deps
	$(VENV)/bin/python -m pytest -n $(TEST_WORKERS)

quick-test: $(STAMP)
	$(VENV)/bin/python -m pytest -n $(TEST_WORKERS) -m 'not slow'
