# ponder: two commands set up a fresh machine.
#   make demo   create .venv if missing, install, train the default preset on the CPU
#   make test   same set-up, then the test suite
#   make bench  measure and write BENCHMARKS.md (long: see benchmarks/README.md)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.ponder-installed
# torch: pinned to the release this project is tested with. Without a CUDA GPU, point
# TORCH_INDEX at PyTorch's CPU wheel index (e.g. TORCH_INDEX=https://download.pytorch.org/whl/cpu)
# unless a CPU wheel is already available to pip, as on the reference machine.
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=

.PHONY: demo test bench install clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m ponder train demo --run-dir runs/demo-$$(date +%Y%m%d-%H%M%S)

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) -m benchmarks.run_all

clean:
	rm -rf $(VENV) runs .pytest_cache
