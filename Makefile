# ovsfoot: `make lab` runs the lab demo, `make test` the test suite (lint, unit tests,
# system tests), `make unit` the unit tests alone (any user, seconds), `make kernels` the
# eBPF tracer on Debian's four kernels in the VM (about 5 min each under emulation).
# All install what they need first (Debian packages, a virtualenv in .venv).

VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: deps venv lab kernels test unit lint bench clean vagrant-box vagrant-lab

deps:
	sudo_() { if [ "$$(id -u)" = 0 ]; then "$$@"; else sudo "$$@"; fi; }; \
	sudo_ sh integration/install-deps.sh

$(STAMP): setup.py integration/install-deps.sh
	$(MAKE) deps
	/usr/bin/python3 -m venv --system-site-packages $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,lab]'
	touch $@

venv: $(STAMP)

# the lab's own entry point, run from the source tree (integration/ is not installed)
lab: $(STAMP)
	$(PY) -m integration.lab

kernels: $(STAMP)
	$(PY) -m integration.tracer_matrix

# the Vagrant lab on libvirt, offline: a box built from Debian packages (cached in
# /var/cache/ovsfoot/box, rebuilt when its inputs change), then vagrant up, the experiment, destroy
vagrant-box: deps
	bash vagrant/box/build.sh

vagrant-lab: vagrant-box
	bash vagrant/lab.sh

lint: $(STAMP)
	$(PY) -m ruff check .

unit: $(STAMP)
	$(PY) -m pytest -q tests/unit

test: lint
	$(PY) -m pytest -v tests

bench: $(STAMP)
	$(PY) bench/run.py

clean:
	rm -rf $(VENV) build *.egg-info
