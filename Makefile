# detloop: the two commands. Both create .venv idempotently (a second run installs nothing).
SHELL := /bin/bash
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.detloop-installed
OPENCV_VERSION := 4.12.0.88

.PHONY: demo test env unit integration stack-up stack-down lint bench clean-data

env: $(STAMP)

# The venv takes ~7.3 GB (torch+torchvision wheels that import beside ultralytics on x86_64 are the CUDA
# builds); below NEED_GB free, pip would die half-way with ENOSPC, so say so first, in one line.
NEED_GB ?= 8

$(STAMP): pyproject.toml Makefile
	@test -x $(BIN)/python || { free=$$(df -Pk . | awk 'NR==2 {print int($$4/1048576)}'); \
	  if [ "$$free" -lt $(NEED_GB) ]; then \
	    echo "detloop: only $${free} GB free on $$(df -P . | awk 'NR==2 {print $$6}') ($(CURDIR)); the environment needs about $(NEED_GB) GB (set NEED_GB=0 to try anyway)" >&2; exit 1; fi; }
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24"
	$(BIN)/python -m pip install --quiet -e ".[dev,dask]" "opencv-python==$(OPENCV_VERSION)" "opencv-python-headless==$(OPENCV_VERSION)"
	@# cv2: opencv-python needs libGL, absent on a fresh Debian; the headless build of the same
	@# version is installed last so its cv2/ wins, deterministically.
	$(BIN)/python -m pip install --quiet --no-deps --force-reinstall "opencv-python-headless==$(OPENCV_VERSION)"
	$(BIN)/python -c "import cv2; print('cv2', cv2.__version__, 'ok')"
	@touch $(STAMP)

demo: env
	$(BIN)/detloop demo

test: env
	$(BIN)/lint-imports
	@# unit and flow tiers first: the integration conftest starts the stack in the background meanwhile
	$(BIN)/python -m pytest -q -p no:cacheprovider --durations=20 tests/unit tests/flows tests/integration

unit: env
	$(BIN)/python -m pytest -q tests/unit

integration: env
	$(BIN)/python -m pytest -q tests/integration

stack-up: env
	$(BIN)/detloop stack up

stack-down: env
	$(BIN)/detloop stack down

lint: env
	$(BIN)/ruff check cli detloop flows tasks infra benchmarks tests
	$(BIN)/lint-imports

bench: env
	$(BIN)/detloop bench all
