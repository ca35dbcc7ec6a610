# The two commands of the README. Both set up what they need first (scripts/bootstrap.sh).
VENV ?= .venv
CORES ?= 2

.PHONY: run test test-all dry-run bench

run:  ## set up, then run the default experiment (workflow_config.yaml) into results/
	bash scripts/bootstrap.sh
	$(VENV)/bin/snakemake --cores $(CORES)

test:  ## set up (with the Label Studio server the live tests start), then run the test suite on CORES workers
	bash scripts/bootstrap.sh --label-studio-server
	$(VENV)/bin/python -m pytest -n $(CORES) --dist loadfile --no-loadscope-reorder -m "not slow" --durations=15

test-all:  ## the test suite with the tests marked slow (the ResNet-50 convergence cells)
	bash scripts/bootstrap.sh --label-studio-server
	$(VENV)/bin/python -m pytest -n $(CORES) --dist loadfile --no-loadscope-reorder --durations=15

dry-run:  ## show what `make run` would do
	$(VENV)/bin/snakemake -n --cores $(CORES)

bench:  ## speed benchmarks (on demand; results in BENCHMARKS.md)
	bash scripts/bootstrap.sh
	$(VENV)/bin/python benchmarks/run_benchmarks.py
