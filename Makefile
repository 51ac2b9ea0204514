# The two commands a newcomer needs:  make reproduce   and   make test
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
OUT ?= results/local

.PHONY: reproduce test test-fast venv tools image lint bench stress cluster-up cluster-down clean

## venv: create .venv with pip and install the package with torch, DALI and the test tools
venv: $(STAMP)
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[train,dali,test]'
	@touch $(STAMP)

## reproduce: run the quick campaign sized for this machine and write the report
reproduce: $(STAMP)
	@sh slurm/login-node-hint.sh
	$(VENV)/bin/pyramidrepro reproduce --out $(OUT)

## tools: as root, the Debian packages the image tests need (mmdebstrap builds it, bwrap runs it,
## Charliecloud's ch-run runs it the way a site's own runtime would)
tools:
	@if [ "$$(id -u)" = 0 ] && { ! command -v mmdebstrap >/dev/null || ! command -v bwrap >/dev/null \
		|| ! command -v ch-run >/dev/null; }; then apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mmdebstrap bubblewrap charliecloud-runtime >/dev/null; fi

## image: the container image as a folder (about 2.5 min and 6.4 GB cold here; cached by recipe hash), path printed last
image: $(STAMP) tools
	PYTHON=$(PY) bash containers/build-local.sh

## test: lint, then the whole suite (starts the local Slurm test cluster when it can; builds the image)
test: $(STAMP) tools
	$(VENV)/bin/ruff check src tests benchmarks devicecheck
	bash slurm/dev/with-cluster.sh bash tests/run_suite.sh $(PY)

## test-fast: the edit-test loop: lint, then every test that needs no cluster, no image and no long process
test-fast: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks devicecheck
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -m "not slurm and not image and not slow and not device_check" tests

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks devicecheck

## bench: the benchmark scripts (figures printed, not asserted)
bench: $(STAMP)
	$(VENV)/bin/pyramidrepro bench --ablate
	$(PY) benchmarks/ddp_scaling.py
	$(VENV)/bin/pyramidrepro bench-loader --loader torchvision
	$(VENV)/bin/pyramidrepro bench-loader --loader torch
	$(VENV)/bin/pyramidrepro bench-loader --loader dali

stress: $(STAMP)
	$(PY) benchmarks/ddp_stress.py --runs 20

cluster-up:
	bash slurm/dev/cluster.sh start
cluster-down:
	bash slurm/dev/cluster.sh stop

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache results/local
