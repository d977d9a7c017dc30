# Two commands do everything (README.md): `make serve` and `make test`.
# Both create the virtual environment at .venv on first use, then reuse it.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The CPU machines of CI take torch 2.13.0 from their disk; on a CUDA machine pip gets the CUDA build.
# Override to keep another torch: make test TORCH="torch==2.11.0"
TORCH ?= torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: serve site test lab tour tour-kernels venv clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=24"
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -c constraints.txt -e ".[test,docs,lessons]"
	touch $(STAMP)

venv: $(STAMP)

## Build the tutorial site with every lesson executed, then serve it on http://127.0.0.1:8000
serve: site
	@echo "Serving the site on http://127.0.0.1:8000 (Ctrl-C to stop)"
	$(PY) -m http.server 8000 --bind 127.0.0.1 --directory site

site: $(STAMP)
	$(PY) -m mkdocs build --strict

## Run the whole test suite (CPU: kernels in Triton's interpreter; GPU tests skip without a GPU)
test: $(STAMP)
	$(PY) -m pytest

## Open the lessons in JupyterLab (they are jupytext .py files: open them as notebooks)
lab: $(STAMP)
	$(VENV)/bin/jupyter lab lessons/

## Ten-second proof that the install works: every algorithm, every form, error and time
tour: $(STAMP)
	$(PY) -m reference

## The same for the Triton kernels (a GPU, or Triton's interpreter on the CPU)
tour-kernels: $(STAMP)
	$(PY) -m kernels

clean:
	rm -rf site build docs/lessons .pytest_cache .hypothesis
