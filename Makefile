# Gateway appliance: build and test entry points. See README.md.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
SPEC ?= appliance.yaml
BUILD ?= build
PYTEST := $(BIN)/pytest

.PHONY: setup host tools venv ova bundle image verify check lint unit integration vm bench clean distclean

setup: host venv tools

host:
	@scripts/setup-host.sh

# vcsim and govc for the SDK tests, built from Debian's govmomi source into .tools/bin.
tools: host
	@scripts/build-tools.sh

# The C accelerators (scripts/build-accel.sh keeps the list), compiled in place for the venv's
# Python: gateway/filter/_xmlfast.c -> gateway/filter/_xmlfast$(EXT_SUFFIX), rebuilt whenever its
# source or the build script changes. The suffix is the venv's interpreter's, or before the venv
# exists the interpreter it is made from. The image compiles its own (image/mkosi.build.chroot).
ACCEL_PY = $(if $(wildcard $(BIN)/python),$(BIN)/python,$(PY))
EXT_SUFFIX := $(shell $(ACCEL_PY) -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))')
ACCEL_SOURCES := $(shell scripts/build-accel.sh --list)
ACCEL_MODULES := $(ACCEL_SOURCES:.c=$(EXT_SUFFIX))

# The venv is rebuilt only when the pins change.
venv: $(VENV)/.stamp $(ACCEL_MODULES)
$(VENV)/.stamp: requirements.txt pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	@$(BIN)/pip install -q --disable-pip-version-check -r requirements.txt
	@$(BIN)/pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	@touch $@

$(ACCEL_MODULES): %$(EXT_SUFFIX): %.c scripts/build-accel.sh | $(VENV)/.stamp
	@scripts/build-accel.sh $(BIN)/python . $<

# LOCK=build/packages.lock installs exactly the package versions of an earlier build.
ova: setup
	$(BIN)/appliance build --spec $(SPEC) --output $(BUILD) $(if $(LOCK),--lock $(LOCK))

# Checks an artifact set (default: the last build): SHA256SUMS, the SBOM against the package lock.
verify: venv
	$(BIN)/appliance verify $(BUILD)
	$(BIN)/appliance verify-signature $(BUILD)

image: ova

# The signed update bundle (build/NAME-VERSION.raucb) of the same image: `appliance build` makes it
# with the OVA, from the raw disk's root slot, and SHA256SUMS covers it (docs/updates.md).
bundle: ova

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

unit: venv
	$(PYTEST) -m unit -q

integration: setup
	$(PYTEST) -m integration -q

vm: ova
	$(PYTEST) -m vm -q

# The whole suite: lint, unit, integration, the image build and the QEMU tests.
check: setup lint unit integration vm

# The relay benchmarks run the gateway from the image just built, as shipped (bench/shipped.py).
bench: ova
	$(BIN)/python bench/run.py

clean:
	rm -rf $(BUILD) .pytest_cache .mypy_cache .ruff_cache

distclean: clean
	rm -rf $(VENV) .tools $(ACCEL_MODULES)
