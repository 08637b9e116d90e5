# README's two commands: `make demo` (the main job) and `make test` (the test suite).
# Each sets up .venv first: torch==2.14.1 torchvision==0.29.1 (this machine's wheel store), then vitpe[dev].
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(PY) tools/study.py --config configs/study_position_64.yaml --output study

showcase: venv
	$(PY) tools/showcase.py

test: venv
	$(PY) -m pytest -n 2 -q tests

catalogue: venv
	$(PY) tools/make_catalogue.py

.PHONY: venv demo showcase test catalogue
