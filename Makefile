# CUDA Graph Lab
#
#   make lab     set up the environment (first run only) and open the course in JupyterLab
#   make test    set up the environment (first run only) and run the whole test suite
#   make labs    regenerate labs/ from solutions/
#   make doctor  report the environment and say what to fix
#   make site    build the course as a website in build/site/ (from the notebooks' stored outputs)
#
# The environment is a virtualenv in $(VENV), created with $(BASE_PYTHON). PyTorch is
# installed first, from $(TORCH_SPEC), only when the interpreter cannot import torch.
# To use an interpreter you already have (a conda env, a GPU machine's PyTorch), give it:
#   make test PYTHON=python3          (no virtualenv is created; the course is pip-installed into it)
#   make lab VENV_ARGS=--system-site-packages   (a virtualenv that sees the system's torch)

SHELL := /bin/bash
.DEFAULT_GOAL := help

BASE_PYTHON ?= python3
VENV ?= .venv
VENV_ARGS ?=
VENV_PYTHON := $(VENV)/bin/python
ifeq ($(strip $(VENV)),)
PYTHON ?= python3
else
PYTHON ?= $(VENV_PYTHON)
endif
TORCH_SPEC ?= torch==2.13.0
# Which PyTorch build `pip install` gets, when neither TORCH_PIP_ARGS nor TORCH_SPEC is given:
# with an NVIDIA GPU (`nvidia-smi -L` lists one), PyPI's CUDA build; without one, PyPI's file
# when pip already has a CPU build of TORCH_SPEC on disk (its find-links), else PyTorch's CPU
# build from its CPU wheel index instead of a CUDA build of several GB. Worked out only when
# PyTorch is missing.
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
TORCH_PIP_ARGS ?= $(if $(filter file,$(origin TORCH_SPEC)),$(TORCH_AUTO_PIP_ARGS),)
TORCH_AUTO_PIP_ARGS = $(shell \
	py="$(PYTHON)"; command -v "$$py" >/dev/null 2>&1 || py=""; \
	if [ -n "$$py" ] && "$$py" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('torch') is None)" >/dev/null 2>&1; then :; \
	elif nvidia-smi -L 2>/dev/null | grep -q '^GPU '; then :; \
	elif "$${py:-$(BASE_PYTHON)}" -m pip install --dry-run --quiet --no-deps --no-index --ignore-installed "$(TORCH_SPEC)" >/dev/null 2>&1; then :; \
	else echo "--index-url $(TORCH_CPU_INDEX)"; fi)
LAB_ARGS ?=
LAB_NOTEBOOK ?= notebooks/00_welcome.ipynb
# The course's JupyterLab settings (no news pop-up; a terminal with `graphlab` on its PATH).
LAB_SETTINGS := $(CURDIR)/tools/lab-settings
# The folder of $(PYTHON)'s scripts (graphlab, jupyter): first on the PATH of JupyterLab, its
# kernels and its terminal.
PYTHON_BIN_DIR = $(if $(filter $(VENV_PYTHON),$(PYTHON)),$(abspath $(VENV))/bin,$(shell "$(PYTHON)" -c "import sysconfig; print(sysconfig.get_path('scripts'))" 2>/dev/null))
NBVAL_CELL_TIMEOUT ?= 300
# Test files (and notebooks) run in parallel on every core; a file's tests stay in one worker.
TEST_WORKERS ?= auto
PARALLEL = -n $(TEST_WORKERS) --dist loadfile
SANITIZE := tests/nbval_sanitize.cfg
# The notebooks nbval runs: lessons and solutions (labs hold stubs: build-labs --check covers them).
NBVAL_PATHS = $(sort $(wildcard notebooks/*.ipynb solutions/*.ipynb))

# What `pip install -e .` adds: nothing for a learner (make lab), the test tools and the site
# tools for make test (the `test` and `site` extras of pyproject.toml); set per target below.
EXTRAS ?=
comma := ,
PACKAGE_SPEC = .$(if $(EXTRAS),[$(EXTRAS)],)
# In a virtualenv the install is remembered by a stamp per set of extras (redone when
# pyproject.toml changes); with PYTHON=... pointing elsewhere, `pip install -e` runs every time.
INSTALL_STAMP = $(if $(filter $(VENV_PYTHON),$(PYTHON)),$(VENV)/.graphlab-installed$(if $(EXTRAS),-$(subst $(comma),-,$(EXTRAS)),),)

.PHONY: help env lab test test-gpu labs lesson10 doctor site

help:
	@echo "make lab     open the course in JupyterLab (sets up $(or $(VENV),the environment) on first run)"
	@echo "make test    run the whole test suite (same set-up)"
	@echo "make labs    regenerate labs/ from solutions/"
	@echo "make lesson10  regenerate lesson 10 (notebooks/10 and solutions/10, then its lab)"
	@echo "make doctor  report the environment and say what to fix"
	@echo "make site    build the course as a website: open build/site/index.html"
	@echo "make test-gpu  on an NVIDIA GPU machine: unit tests, conformance on both backends, measured vs"
	@echo "               modelled figures, strict nbval of every notebook on the real backend, the"
	@echo "               capstone benchmark, and a report in reports/gpu/ (about 30 minutes on an H100)"
	@echo "options: PYTHON=... (use that interpreter, no virtualenv), TORCH_SPEC='torch==2.11.*',"
	@echo "         VENV_ARGS=--system-site-packages, LAB_ARGS='--port 8899 --no-browser'"

# The one set-up recipe every target below depends on.
env:
	@set -e; \
	if [ -n "$(INSTALL_STAMP)" ] && [ ! -x "$(VENV_PYTHON)" ]; then \
		echo "make: creating the virtualenv $(VENV) with $(BASE_PYTHON)"; \
		$(BASE_PYTHON) -m venv $(VENV_ARGS) "$(VENV)"; \
	fi; \
	if ! "$(PYTHON)" -c "import torch" >/dev/null 2>&1; then \
		torch_pip_args="$(strip $(TORCH_PIP_ARGS))"; \
		echo "make: installing PyTorch ($(TORCH_SPEC)$${torch_pip_args:+, pip options: $$torch_pip_args}) into $(PYTHON)"; \
		"$(PYTHON)" -m pip install $$torch_pip_args "$(TORCH_SPEC)"; \
	fi; \
	stamp="$(INSTALL_STAMP)"; \
	if [ -z "$$stamp" ] || [ ! -f "$$stamp" ] || [ pyproject.toml -nt "$$stamp" ]; then \
		echo "make: installing the course package (pip install -e '$(PACKAGE_SPEC)') into $(PYTHON)"; \
		"$(PYTHON)" -m pip install -e "$(PACKAGE_SPEC)"; \
		if [ -n "$$stamp" ]; then touch "$$stamp"; fi; \
	fi

lab: env
	@root_flag=""; if [ "$$(id -u)" = 0 ]; then root_flag="--allow-root"; fi; \
	echo "make: graphlab is on the PATH in JupyterLab's terminal and notebooks; in another shell type $(PYTHON_BIN_DIR)/graphlab, or first: source $(PYTHON_BIN_DIR)/activate"; \
	echo "make: starting JupyterLab on 127.0.0.1: open the http://127.0.0.1:<port>/lab/tree/$(LAB_NOTEBOOK)?token=... URL it prints below"; \
	PATH="$(PYTHON_BIN_DIR):$$PATH" GRAPHLAB_BIN_DIR="$(PYTHON_BIN_DIR)" \
	"$(PYTHON)" -m jupyter lab --ip=127.0.0.1 --ServerApp.root_dir="$(CURDIR)" \
		--config="$(LAB_SETTINGS)/jupyter_lab_config.py" \
		--LabApp.default_url="/lab/tree/$(LAB_NOTEBOOK)" $$root_flag $(LAB_ARGS)

test: EXTRAS = test,site
test: env
	"$(PYTHON)" -m graphlab_utils build-labs --check
	"$(PYTHON)" -m graphlab_utils build-lesson10 --check
	$(MAKE) --no-print-directory site EXTRAS=$(EXTRAS)
	"$(PYTHON)" -m pytest $(PARALLEL) tests
	@if [ -z "$(NBVAL_PATHS)" ]; then \
		echo "make: no notebooks in notebooks/ or solutions/ yet: nothing for nbval to run"; \
	else \
		echo "\"$(PYTHON)\" -m pytest --nbval --nbval-current-env ... $(NBVAL_PATHS)"; \
		"$(PYTHON)" -m pytest $(PARALLEL) --nbval --nbval-current-env \
			--nbval-sanitize-with $(SANITIZE) \
			--nbval-cell-timeout=$(NBVAL_CELL_TIMEOUT) \
			$(NBVAL_PATHS); \
	fi

# On a GPU machine: everything the course claims, checked on the real GPU, and a report.
GPU_RUN_DIR ?= build/gpu-run
# notebooks run at a time by nbval and execute; a notebook that fails while sharing the GPU is re-run alone
GPU_JOBS ?= 1
test-gpu: EXTRAS = test
test-gpu: env
	"$(PYTHON)" tools/gpu/test_gpu.py --out $(GPU_RUN_DIR) --jobs $(GPU_JOBS) --report

labs: env
	"$(PYTHON)" -m graphlab_utils build-labs

# Lesson 10 is generated: notebooks/10 from the question bank and the claims, solutions/10 from
# the katas (it executes both, a few minutes on the simulator); then its lab from the solution.
lesson10: env
	"$(PYTHON)" -m graphlab_utils build-lesson10
	"$(PYTHON)" -m graphlab_utils build-labs

doctor: env
	"$(PYTHON)" -m graphlab_utils doctor

# The course as a website, from the notebooks' stored outputs (nothing is executed): Sphinx with
# myst-nb and sphinx-book-theme (the `site` extra, installed on first run). Fails on a broken link
# or a page that does not render. Open build/site/index.html, or: python -m http.server -d build/site
site: env
	@if ! "$(PYTHON)" -c "import sphinx, myst_nb, sphinx_book_theme" >/dev/null 2>&1; then \
		echo "make: installing the site tools (pip install -e '.[site]') into $(PYTHON)"; \
		"$(PYTHON)" -m pip install -e ".[site]"; \
	fi
	"$(PYTHON)" site/build.py
