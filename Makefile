# QASM testbed. Every target that needs the environment depends on `setup`, which is
# idempotent and cheap once done, so `make run` and `make test` work from nothing.

SHELL := /bin/bash
# The project's interpreter: any CPython >= 3.11 with venv. Debian's `mininet` module is
# pure Python and lives in Debian's dist-packages; the venv sees it through a .pth file
# that exposes that one package only (see the `venv` recipe), so the venv may be built
# from the default python3 on PATH or from /usr/bin/python3 alike.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
OVS_CTL := /usr/share/openvswitch/scripts/ovs-ctl
APT_PACKAGES := mininet openvswitch-switch iproute2 ethtool tcpdump procps psmisc iptables \
    nftables conntrack util-linux redis-server ngtcp2-client ngtcp2-server tshark
SCENARIO ?= scenarios/default.yaml
OUT ?= results/$(notdir $(basename $(SCENARIO)))-$(shell date +%Y%m%d-%H%M%S)

.PHONY: setup system-packages ovs venv run test test-unit test-integration bench fuzz lint clean

setup: system-packages ovs venv

# Debian packages: install only what is missing (apt-get update once, then install).
system-packages:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}' $$p 2>/dev/null \
	    | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	    echo "setup: installing Debian packages: $$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

# No init system starts Open vSwitch here. Without the openvswitch kernel module ovs-ctl
# skips modprobe and ovs-vswitchd serves bridges of datapath_type=netdev (userspace).
ovs: system-packages
	@ovs-vsctl --timeout=3 show >/dev/null 2>&1 || $(OVS_CTL) --system-id=random --no-mlockall start

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	@mkdir -p $(VENV)/debian-mininet
	@ln -sfn /usr/lib/python3/dist-packages/mininet $(VENV)/debian-mininet/mininet
	@echo "$(abspath $(VENV))/debian-mininet" > $$($(PY) -c 'import sysconfig; print(sysconfig.get_path("purelib"))')/debian-mininet.pth
	@$(PY) -c 'import mininet.net, os_ken, aioquic, scapy, yaml, pydantic, scipy, redis, qh3'
	@touch $@

# The report is written even when the run failed part-way (it reports what finished); the
# run's own exit status is kept.
run: setup
	@status=0; $(VENV)/bin/qasm run $(SCENARIO) --out $(OUT) || status=$$?; \
	$(VENV)/bin/qasm report $(OUT) || true; \
	exit $$status

test: setup
	$(PY) -m pytest -q

test-unit: setup
	$(PY) -m pytest -q -m 'not integration'

test-integration: setup
	$(PY) -m pytest -q -m integration

bench: setup
	$(PY) -m testbed.bench

fuzz: setup
	$(PY) -m pytest -q -m fuzz -p no:cacheprovider

lint: setup
	$(VENV)/bin/ruff check qasm testbed topologies tests
	$(VENV)/bin/ruff format --check qasm testbed topologies tests

# Removes leftovers of crashed runs of this tool only (never a broad `mn -c`).
clean: setup
	$(VENV)/bin/qasm clean
