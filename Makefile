# neuralmark — one-command entry points. Every target sets the no-telemetry env.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
export ZENML_ANALYTICS_OPT_IN := false
export MLFLOW_DISABLE_TELEMETRY := true
export DVC_NO_ANALYTICS := 1
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION := false
export ZENML_LOGGING_VERBOSITY ?= WARN
PROFILE ?= tiny
METHOD ?= pgd_signer

.PHONY: venv kfp-venv test demo stack data lint bench ui serve clean

# torch/torchvision first: pip takes the pinned builds from local disk.
$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e ".[dev,peers]"
	touch $@

venv: $(VENV)/.installed

# The second environment that compiles the pipelines for Kubeflow Pipelines (kfp 2.x clashes
# with the main pins; README "Scale out", Kubeflow): the locked requirements, then the project
# itself without its dependencies. tests/test_kfp_spec.py runs its python.
KFP_VENV := .venv-kfp
$(KFP_VENV)/.installed: requirements/kubeflow.txt pyproject.toml setup.py
	test -x $(KFP_VENV)/bin/python || $(PY) -m venv $(KFP_VENV)
	$(KFP_VENV)/bin/pip install -q --upgrade pip
	$(KFP_VENV)/bin/pip install -q -r requirements/kubeflow.txt
	$(KFP_VENV)/bin/pip install -q --no-deps --no-build-isolation -e .
	touch $@

kfp-venv: $(KFP_VENV)/.installed

# The suite runs in one pytest-xdist worker per core, two at most (each worker holds torch,
# ZenML and MLflow: ~1.5 GB), whole files per worker (--dist loadfile: a module's fixtures are
# built once); tests/conftest.py gives each worker one torch thread. TEST_WORKERS=0 runs it in
# one process.
TEST_WORKERS ?= $(shell $(PY) -c 'import os; n = min(2, len(os.sched_getaffinity(0))); print(n if n > 1 else 0)')
test: venv kfp-venv
	$(BIN)/python -m pytest -q -p no:cacheprovider -n $(TEST_WORKERS) --dist loadfile tests

lint: venv
	$(BIN)/ruff check components integrations runtime steps pipelines cli tests scripts setup.py

stack: venv
	$(BIN)/python -m neuralmark.runtime.stack

data: venv
	$(BIN)/neuralmark data sample

demo: venv
	$(BIN)/python -m neuralmark.runtime.stack
	$(BIN)/neuralmark train $(METHOD) --profile $(PROFILE)

bench: venv
	$(BIN)/neuralmark benchmark --out benchmark-out

ui: venv
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow.db --host 127.0.0.1 --port 5055 --workers 1

# The champion of $(METHOD) behind MLflow's scoring server (README "Serving"); uvicorn from the venv.
serve: venv
	PATH=$(CURDIR)/$(BIN):$$PATH MLFLOW_TRACKING_URI=sqlite:///$(CURDIR)/mlflow.db \
	$(BIN)/mlflow models serve -m models:/neuralmark-$(METHOD)@champion --env-manager local \
	  --host 127.0.0.1 --port 5001

clean:
	rm -rf .zen mlflow.db mlruns reports outputs
