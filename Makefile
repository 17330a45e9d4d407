# Fresh-machine entry points. Every target creates .venv and installs the package when missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# torch and torchvision must come as a matching pair (segment_anything imports torchvision).
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
PYTEST_ARGS ?=
DEMO_ARGS ?=
BUNDLE ?= masksam

.PHONY: venv test demo lint bench clean zoo-export

venv: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel
	$(PY) -m pip install --quiet $(TORCH_PINS)
	$(PY) -m pip install --quiet -e ".[test,demo,dev,nnunet]" $(TORCH_PINS)
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -n 2 --dist loadgroup tests $(PYTEST_ARGS)

demo: $(STAMP)
	$(PY) -m masksam.demo $(DEMO_ARGS)

lint: $(STAMP)
	$(PY) -m ruff check masksam tests benchmarks scripts algorithm_templates
	$(PY) -m ruff format --check masksam tests benchmarks scripts algorithm_templates

bench: $(STAMP)
	$(PY) benchmarks/run_all.py

zoo-export: $(STAMP)
	$(PY) scripts/zoo_export.py $(BUNDLE) build/zoo

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
