# Two commands for a fresh clone: `make demo` and `make test`. Each sets up .venv first.
VENV ?= .venv
PYTHON ?= python3
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test quick-test

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/llmtap demo

test: $(STAMP)
	$(VENV)/bin/python -m pytest

quick-test: $(STAMP)
	$(VENV)/bin/python -m pytest -m 'not slow'
