# Two commands matter: `make demo` (the main job) and `make test` (everything CI runs).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: venv testbin demo test unit lint bench image image-test clean

venv: $(STAMP)
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

# kube-apiserver, etcd, kubectl and helm, built from Go modules and cached in ~/.cache/dlm-guard.
testbin:
	bash tools/testbin/build.sh

demo: venv testbin
	$(PY) -m controlplane demo

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy dlm_guard webhook certs reconciler controlplane bench doctor migrate tools/image
	$(VENV)/bin/mypy --explicit-package-bases tests  # tests are type-checked too (their folders are no packages)

unit: venv
	$(VENV)/bin/pytest -m 'not e2e' -q

test: venv testbin lint
	$(VENV)/bin/pytest -q

bench: venv testbin
	$(PY) -m bench all

# The container image (IMAGE, default dlm-guard:dev) with podman or docker; see tools/image/.
image:
	bash tools/image/build.sh

# The built image run for real: serve and reconcile against harness clusters.
image-test: venv testbin
	bash tools/image/smoke.sh

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
