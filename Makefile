# Two commands for a newcomer: `make demo` and `make test`.
# Environments live in ignored folders of the checkout; pip's download cache
# (~/.cache/pip) is reused between runs, the environments are rebuilt when
# pyproject.toml changes.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
CONSTRAINTS := requirements/openstack.txt
# The real Glance the integration tests start runs from its own environment.
GLANCE_VENV := .venv-glance
# nova's scheduler code and in-process functional stack, with vmtrust installed into it.
NOVA_VENV := .venv-nova
# EGI's publisher, cloud-info-provider, as a real client of the Glance store in the tests.
CIP_VENV := .venv-cip
CIP_VERSION := 1.2.0
# atrope, the EGI image sync vmtrust replaces: its list parser and its Glance uploads are
# what the compatibility and migration tests run against (2.0.0 is the release on PyPI).
ATROPE_VENV := .venv-atrope
ATROPE_VERSION := 2.0.0
# oras-py and openstacksdk: the baseline of benchmarks/oci_ingest.py (atrope's Harbor path)
ORAS_VENV := .venv-oras
ORAS_VERSION := 0.2.43

.PHONY: demo test lint bytecode sample bench bench-glance bench-fanout bench-filter bench-ec2 bench-oci bench-audit bench-adopt bench-scale venv \
	venv-glance venv-nova venv-cip venv-atrope venv-oras cloud-init clean

$(BIN)/.installed: pyproject.toml setup.py $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c $(CONSTRAINTS) -e '.[test,glance,ec2]'
	touch $@

venv: $(BIN)/.installed

$(GLANCE_VENV)/bin/.installed: $(CONSTRAINTS)
	$(PYTHON) -m venv $(GLANCE_VENV)
	$(GLANCE_VENV)/bin/pip install --quiet --upgrade pip
	$(GLANCE_VENV)/bin/pip install --quiet -c $(CONSTRAINTS) glance gunicorn uwsgi
	touch $@

venv-glance: $(GLANCE_VENV)/bin/.installed

$(NOVA_VENV)/bin/.installed: $(CONSTRAINTS) pyproject.toml setup.py
	$(PYTHON) -m venv $(NOVA_VENV)
	$(NOVA_VENV)/bin/pip install --quiet --upgrade pip
	$(NOVA_VENV)/bin/pip install --quiet -c $(CONSTRAINTS) nova openstack-placement \
		oslotest wsgi-intercept testtools pytest -e '.[glance]'
	touch $@

venv-nova: $(NOVA_VENV)/bin/.installed

# Its own environment: cloud-info-provider pulls the python-*client libraries vmtrust
# does not use; the tests run it unchanged against the real Glance (tests/cip_main.py).
$(CIP_VENV)/bin/.installed: $(CONSTRAINTS)
	$(PYTHON) -m venv $(CIP_VENV)
	$(CIP_VENV)/bin/pip install --quiet --upgrade pip
	$(CIP_VENV)/bin/pip install --quiet -c $(CONSTRAINTS) cloud-info-provider==$(CIP_VERSION)
	touch $@

venv-cip: $(CIP_VENV)/bin/.installed

$(ATROPE_VENV)/bin/.installed: $(CONSTRAINTS)
	$(PYTHON) -m venv $(ATROPE_VENV)
	$(ATROPE_VENV)/bin/pip install --quiet --upgrade pip
	$(ATROPE_VENV)/bin/pip install --quiet -c $(CONSTRAINTS) atrope==$(ATROPE_VERSION)
	touch $@

venv-atrope: $(ATROPE_VENV)/bin/.installed

$(ORAS_VENV)/bin/.installed: $(CONSTRAINTS)
	$(PYTHON) -m venv $(ORAS_VENV)
	$(ORAS_VENV)/bin/pip install --quiet --upgrade pip
	$(ORAS_VENV)/bin/pip install --quiet -c $(CONSTRAINTS) oras==$(ORAS_VERSION) openstacksdk
	touch $@

venv-oras: $(ORAS_VENV)/bin/.installed

# cloud-init is not on PyPI: its Debian package's Python tree gives the tests its own
# schema and user-data processing (used at test time only, never vendored).
CLOUD_INIT := .cloud-init
$(CLOUD_INIT)/.extracted:
	mkdir -p $(CLOUD_INIT)
	cd $(CLOUD_INIT) && (apt-get download cloud-init 2>/dev/null \
		|| (apt-get update -qq && apt-get download cloud-init))
	dpkg -x $(CLOUD_INIT)/cloud-init_*.deb $(CLOUD_INIT)/root
	touch $@

cloud-init: $(CLOUD_INIT)/.extracted

# vmtrust's own modules byte-compiled, as pip compiles a package it installs: where Python
# may not write them itself (PYTHONDONTWRITEBYTECODE, set on this project's machines), every
# vmtrust process would compile its sources again, about 0.1 s each.  Up-to-date files are
# skipped, so this is cheap to repeat.
bytecode: venv
	$(BIN)/python -m compileall -q vmtrust glance_sync nova_filter

demo: venv bytecode
	$(BIN)/python -m vmtrust.demo

# Every test runs: the services they need are required, not skipped.
test: venv venv-glance venv-nova venv-cip venv-atrope cloud-init bytecode lint
	VMTRUST_REQUIRE_SERVICES=1 $(BIN)/python -m pytest -q
	VMTRUST_REQUIRE_SERVICES=1 $(NOVA_VENV)/bin/python -m pytest -q -p no:cacheprovider tests/with_nova

# ruff for style and mistakes, mypy for types (its files and settings: pyproject.toml)
lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# Regenerate etc/vmtrust/vmtrust.conf.sample after changing options.
sample: venv
	$(BIN)/oslo-config-generator --config-file etc/vmtrust/vmtrust-config-generator.conf
	$(BIN)/oslo-config-generator --config-file etc/nova/vmtrust-nova-config-generator.conf

bench: venv bytecode
	$(BIN)/python benchmarks/verify.py
	$(BIN)/python benchmarks/startup.py

bench-glance: venv venv-glance venv-atrope bytecode
	$(BIN)/python benchmarks/glance_ingest.py

# 10,000 images: first-pass planning, a no-op pass, one changed image (time, peak memory).
bench-scale: venv bytecode
	$(BIN)/python benchmarks/scale.py

# One 1 GiB image to 4 Glance clouds: vmtrust's fan-out, atrope's loop, one target.
bench-fanout: venv venv-glance venv-atrope bytecode
	$(BIN)/python benchmarks/fanout.py

bench-ec2: venv bytecode
	$(BIN)/python benchmarks/ec2_ingest.py

bench-oci: venv venv-glance venv-oras bytecode
	$(BIN)/python benchmarks/oci_ingest.py

bench-audit: venv-nova venv-glance bytecode
	PYTHONPATH=. $(NOVA_VENV)/bin/python benchmarks/audit.py

bench-adopt: venv venv-glance bytecode
	$(BIN)/python benchmarks/adopt.py

bench-filter: venv-nova venv-glance bytecode
	$(NOVA_VENV)/bin/python benchmarks/filter.py

clean:
	rm -rf $(VENV) $(GLANCE_VENV) $(NOVA_VENV) $(CIP_VENV) $(ATROPE_VENV) $(ORAS_VENV) $(CLOUD_INIT) demo-out .pytest_cache .ruff_cache .hypothesis
