# Two commands matter: `make demo` (the main job) and `make test` (everything CI runs).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: venv testbin demo test unit lint bench clean

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
	$(VENV)/bin/mypy dlm_guard webhook certs reconciler controlplane bench migrate

unit: venv
	$(VENV)/bin/pytest -m 'not e2e' -q

test: venv testbin lint
	$(VENV)/bin/pytest -q

bench: venv testbin
	$(PY) -m bench all

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
