# Every target sets itself up: a virtualenv in .venv with pinned versions
# (requirements/constraints.txt) and this package installed in editable mode.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
CONSTRAINTS := requirements/constraints.txt
DEMO_OUT ?= demo-output

.PHONY: setup setup-zoo demo demo-synthetic paper test test-oldest test-zoo docs lint bench clean

$(STAMP): pyproject.toml $(CONSTRAINTS)
	@$(PYTHON) -c 'import sys; sys.exit("seis-sklearn needs Python >= 3.10, found " + sys.version.split()[0]) if sys.version_info < (3, 10) else None'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c $(CONSTRAINTS) -e ".[dev,torch,onnx,dask]"
	touch $(STAMP)

setup: $(STAMP)

# The main job: a small CNN trained on digits (plain and rotation-augmented), layer by layer;
# a line per epoch on stderr; ≈ ½ minute on 2 cores (torch and BLAS on one thread).
demo: $(STAMP)
	$(VENV)/bin/seis demo --out $(DEMO_OUT) --force

# The paper's claims on small models trained here (≈ 2 minutes on 2 idle cores; on a busy
# machine OMP_NUM_THREADS=1 make paper: 50 → 2.7 minutes at load ≈ 5–7).
PAPER_OUT ?= paper-output
paper: $(STAMP)
	$(VENV)/bin/seis paper --out $(PAPER_OUT) --force

# The numpy-only synthetic validation (random filters, activations transformed directly).
demo-synthetic: $(STAMP)
	$(PY) -m seis_sklearn.demo --out $(DEMO_OUT)/synthetic

# The whole suite in 2 processes (pytest-xdist): 6.0 → 5.2 min on 2 cores, where
# many tests run single-threaded Python (subprocesses, hypothesis). Each process, and
# every subprocess a test starts, gets one BLAS/OpenMP/Numba/torch thread: two
# processes with two threads each on 2 cores made OpenBLAS's spinning threads wait on
# each other (measured without coverage: 4:19 → 2:11 for the same 823 tests).
TEST_THREADS := OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1 NUMBA_NUM_THREADS=1
test: $(STAMP)
	$(TEST_THREADS) $(PY) -m pytest -n 2 --cov --cov-report=term-missing:skip-covered -q

# The same suite against the oldest versions pyproject.toml claims (requirements/oldest.txt).
OLD_VENV := .venv-oldest
$(OLD_VENV)/.installed-stamp: pyproject.toml requirements/oldest.txt
	test -x $(OLD_VENV)/bin/python || $(PYTHON) -m venv $(OLD_VENV)
	$(OLD_VENV)/bin/python -m pip install --quiet --disable-pip-version-check -c requirements/oldest.txt -e ".[dev,torch,onnx,dask]"
	touch $@

test-oldest: $(OLD_VENV)/.installed-stamp
	$(TEST_THREADS) $(OLD_VENV)/bin/python -m pytest -n 2 -q -p no:cacheprovider

# The layerwise reports against the real model zoo (torchvision, timm, Hugging Face):
# its own environment, since PyPI's torchvision does not import beside the CPU build of
# torch 2.13.0 that .venv keeps light; torch 2.14.1 + torchvision 0.29.1 come from this
# machine's disk (a CUDA build, ~5.5 GB, run on the CPU). requirements/zoo.txt pins it.
ZOO_VENV := .venv-zoo
ZOO_PACKAGES := torch==2.14.1 torchvision==0.29.1 timm transformers pytest
$(ZOO_VENV)/.installed-stamp: pyproject.toml requirements/zoo.txt
	test -x $(ZOO_VENV)/bin/python || $(PYTHON) -m venv $(ZOO_VENV)
	$(ZOO_VENV)/bin/python -m pip install --quiet --disable-pip-version-check -c requirements/zoo.txt $(ZOO_PACKAGES) -e ".[torch,plot,onnx]"
	touch $@

# Only the zoo environment, without running the tests (`make test-zoo` runs them).
setup-zoo: $(ZOO_VENV)/.installed-stamp

test-zoo: setup-zoo
	$(TEST_THREADS) $(ZOO_VENV)/bin/python -m pytest -q -p no:cacheprovider -o addopts="" tests_zoo

docs: $(STAMP)
	$(PY) -m sphinx -W --keep-going -q -b html docs docs/_build/html

lint: $(STAMP)
	$(VENV)/bin/ruff check seis_sklearn adapters tests tests_zoo benchmarks docs examples
	$(VENV)/bin/ruff format --check seis_sklearn adapters tests tests_zoo benchmarks docs examples

bench: $(STAMP)
	$(PY) benchmarks/run.py

clean:
	rm -rf $(VENV) $(OLD_VENV) $(ZOO_VENV) docs/_build $(DEMO_OUT) $(PAPER_OUT) .coverage
