# Every target sets itself up: a virtualenv in .venv with pinned versions
# (requirements/constraints.txt) and this package installed in editable mode.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
CONSTRAINTS := requirements/constraints.txt
DEMO_OUT ?= demo-output

.PHONY: setup demo test docs lint bench clean

$(STAMP): pyproject.toml $(CONSTRAINTS)
	@$(PYTHON) -c 'import sys; sys.exit("seis-sklearn needs Python >= 3.10, found " + sys.version.split()[0]) if sys.version_info < (3, 10) else None'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c $(CONSTRAINTS) -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(PY) -m seis_sklearn.demo --out $(DEMO_OUT)

test: $(STAMP)
	$(PY) -m pytest --cov=seis_sklearn --cov-report=term-missing:skip-covered -q

docs: $(STAMP)
	$(PY) -m sphinx -W --keep-going -q -b html docs docs/_build/html

lint: $(STAMP)
	$(VENV)/bin/ruff check seis_sklearn tests benchmarks docs
	$(VENV)/bin/ruff format --check seis_sklearn tests benchmarks docs

bench: $(STAMP)
	$(PY) benchmarks/run.py

clean:
	rm -rf $(VENV) docs/_build $(DEMO_OUT) .coverage
