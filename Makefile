# Two commands a new user needs: `make demo` (the main job on the embedded corpus) and `make test`.
# Each creates .venv and installs what it needs. TORCH selects the torch requirement installed first:
# the default takes the local CPU wheel on the dev/CI machines; GPU users pass e.g. TORCH='torch>=2.8'
# (or install their CUDA build into .venv beforehand: without TORCH=, an installed torch>=2.8 is kept).
# A TORCH given to make (command line or environment) replaces the installed torch when it differs from the
# last one given, recorded in .venv/.torch.
VENV   ?= .venv
PY     := $(VENV)/bin/python
TORCH  ?= torch==2.13.0
PYTEST_ARGS ?=

.PHONY: demo test test-slow lint format bench quick-demo clean-venv FORCE

ifeq ($(origin TORCH),file)
TORCH_GIVEN :=
else
TORCH_GIVEN := $(VENV)/.torch
endif

# Rewritten only when the TORCH given differs from the recorded one, so only then is .installed out of date.
$(VENV)/.torch: FORCE
	@mkdir -p $(VENV)
	@test "$$(cat $@ 2>/dev/null)" = '$(TORCH)' || echo '$(TORCH)' > $@

$(VENV)/.installed: pyproject.toml Makefile $(TORCH_GIVEN)
	test -x $(PY) || python3 -m venv $(VENV)
ifeq ($(TORCH_GIVEN),)
	$(PY) -c "import torch, sys; from packaging.version import Version as V; sys.exit(V(torch.__version__.split('+')[0]) < V('2.8'))" 2>/dev/null \
		|| $(PY) -m pip install -q "$(TORCH)"
else  # replace the installed torch only when the requirement given changed ($?: the newer prerequisites)
	$(if $(filter $(TORCH_GIVEN),$?),$(PY) -m pip uninstall -q -y torch && $(PY) -m pip install -q "$(TORCH)",: torch kept)
endif
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

# The main job: the top-k sweep on embedded Shakespeare (measured 11 minutes on 2 cores), then its report.
# Its dry run first: the plan and the estimated time (steps timed on this machine, cached after the first time).
demo: $(VENV)/.installed
	$(PY) -m moe_lab.sweep sweeps/topk.yaml --dry-run --workers 2
	$(PY) -m moe_lab.sweep sweeps/topk.yaml --workers 2

# A short run of the default MoE experiment (50 steps, about a minute on 2 quiet cores): the model
# summary, the training bar and the run's result; its curves and text samples are in TensorBoard.
quick-demo: $(VENV)/.installed
	$(PY) -m moe_lab.train experiments/shakespeare_moe.yaml trainer.max_steps=50 name=quick_demo

test: $(VENV)/.installed
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

# Lint and format check (ruff, settings in pyproject.toml); `make format` applies the formatter and the safe fixes.
lint: $(VENV)/.installed
	$(PY) -m ruff check moe_lab tests
	$(PY) -m ruff format --check moe_lab tests

format: $(VENV)/.installed
	$(PY) -m ruff check --fix moe_lab tests
	$(PY) -m ruff format moe_lab tests

test-slow: $(VENV)/.installed
	$(PY) -m pytest -q -m slow $(PYTEST_ARGS)

bench: $(VENV)/.installed
	$(PY) -m moe_lab.bench moe

clean-venv:
	rm -rf $(VENV)
