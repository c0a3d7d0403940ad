# One-command entry points; `make demo` and `make test` build the environment when needed.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3.12 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.setup-stamp
TORCH_SPEC ?= torch==2.13.0
# Per-run DDS isolation: only this machine, a domain id of its own.
export ROS_AUTOMATIC_DISCOVERY_RANGE ?= LOCALHOST
export FASTDDS_BUILTIN_TRANSPORTS ?= LARGE_DATA

.PHONY: setup demo test bench lint docs clean

setup: $(STAMP)

$(STAMP): requirements.txt requirements-ros.txt setup.py
	@echo "setup [1/5] virtual environment $(VENV) with $(PYTHON)"
	@if [ -n "$$ROS_DISTRO" ]; then \
	  echo "ROS $$ROS_DISTRO is sourced: using its rclpy and messages (no ROS wheels)"; \
	  $(PYTHON) -m venv --system-site-packages $(VENV); \
	else \
	  $(PYTHON) -m venv $(VENV); \
	fi
	@$(PY) -m pip install --quiet --upgrade pip
	@echo "setup [2/5] $(TORCH_SPEC) (the largest download; minutes on a slow link)"
	@$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	@if [ -z "$$ROS_DISTRO" ]; then \
	  echo "setup [3/5] ROS 2 Python wheels: $$(grep -v '^#' requirements-ros.txt | tr '\n' ' ')"; \
	  $(PY) -m pip install --quiet -r requirements-ros.txt; \
	else echo "setup [3/5] ROS 2 wheels skipped (ROS $$ROS_DISTRO sourced)"; fi
	@echo "setup [4/5] project dependencies: $$(grep -v '^#' requirements.txt | tr '\n' ' ')"
	@$(PY) -m pip install --quiet -r requirements.txt
	@echo "setup [5/5] seg_perception itself (editable)"
	@$(PY) -m pip install --quiet --no-deps -e .
	@touch $(STAMP)
	@echo "setup done: $(VENV) ($$($(PY) -c 'import torch; print("torch", torch.__version__)'))"

demo: $(STAMP)
	$(PY) -m seg_perception.demo --output-dir out/demo

test: $(STAMP)
	$(PY) -m pytest -q test

bench: $(STAMP)
	$(PY) bench/bench_inference.py --output bench/results

# the docs' tables of parameters and options, from the code that declares them
docs: $(STAMP)
	$(PY) docs/docs_tables.py

lint: $(STAMP)
	$(PY) -m pytest -q test/lint/test_flake8.py test/lint/test_pep257.py

clean:
	rm -rf $(VENV) out build *.egg-info
