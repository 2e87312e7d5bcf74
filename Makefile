# ponder: two commands set up a fresh machine.
#   make demo   create .venv if missing, install, train the default preset on the CPU
#   make test   same set-up, then the test suite
#   make bench  measure and write BENCHMARKS.md (several hours on 2 CPU cores)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.ponder-installed
# torch: pinned to the release this project is tested with. Install order: a wheel pip can find
# without an index (a local wheel cache or find-links); else, with no NVIDIA GPU, PyTorch's CPU
# wheel index (a CPU build is ~10x smaller than PyPI's CUDA default); else PyPI.
TORCH_SPEC ?= torch==2.13.0
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu

.PHONY: demo test bench install clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet --no-deps --no-index "$(TORCH_SPEC)" 2>/dev/null \
	  || { command -v nvidia-smi >/dev/null && $(PY) -m pip install --quiet "$(TORCH_SPEC)"; } \
	  || $(PY) -m pip install --quiet --index-url $(TORCH_CPU_INDEX) "$(TORCH_SPEC)"
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
