# Two commands for a newcomer: `make demo` and `make test`.
# Environments live in ignored folders of the checkout; pip's download cache
# (~/.cache/pip) is reused between runs, the environments are rebuilt when
# pyproject.toml changes.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: demo test lint sample bench clean

$(BIN)/.installed: pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

venv: $(BIN)/.installed

demo: venv
	$(BIN)/python -m vmtrust.demo

test: venv lint
	$(BIN)/python -m pytest -q

lint: venv
	$(BIN)/ruff check .

# Regenerate etc/vmtrust/vmtrust.conf.sample after changing options.
sample: venv
	$(BIN)/oslo-config-generator --config-file etc/vmtrust/vmtrust-config-generator.conf

bench: venv
	$(BIN)/python benchmarks/verify.py

clean:
	rm -rf $(VENV) demo-out .pytest_cache .ruff_cache .hypothesis
