# meshagent: the newcomer's commands are `make demo` and `make test` (both install what they need).
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=
QUICK ?=

.PHONY: install test lint unit demo bench soak vm-test image image-test clean

install:
	bash scripts/install.sh

lint: install
	$(VENV)/bin/ruff check agent tests bench vm-tests
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

test: install lint
	$(PY) -m pytest $(PYTEST_ARGS)

unit: install
	$(PY) -m pytest -m "not kernel" $(PYTEST_ARGS)

demo: install
	$(VENV)/bin/meshagent demo $(if $(NODES),--nodes $(NODES)) $(if $(KEEP),--keep,--duration $(or $(DURATION),25))

bench: install
	$(PY) bench/run_all.py $(if $(QUICK),--quick,)

soak: install
	$(PY) -m tests.soak.driver --minutes $(or $(MINUTES),10) $(if $(SEED),--seed $(SEED),)

vm-test: install
	bash vm-tests/run.sh

# The OCI image from deploy/Dockerfile (podman/buildah from Debian; the base is made locally and cached).
image:
	KERNEL_HEADERS_PACKAGE=$(KERNEL_HEADERS_PACKAGE) bash scripts/image.sh build

# The image run under podman/runc with deploy/daemonset.yaml's own spec, in a test node namespace.
image-test: install image
	MESHAGENT_IMAGE_TEST=1 $(PY) -m pytest -m image -rP tests/deploy/test_image.py $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
