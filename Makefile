# edgeproof: `make demo` runs the whole network (agents, coordinator, ledger) on embedded defaults,
# `make test` installs everything it needs and runs lint, types and the whole suite.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo demo-tools system-tools test test-arm64 arm64-tools lint bench venv broker clean help

help:
	@echo "make demo   the whole network on this machine: agents, coordinator, rollout, settlement (edgeproof demo)"
	@echo "make test   create .venv, install deps (+ mosquitto), ruff, mypy, pytest (all suites)"
	@echo "make test-arm64  the cross-architecture checks in a Debian arm64 root under qemu (root)"
	@echo "make lint   ruff check, ruff format --check, mypy --strict"
	@echo "make bench  benchmarks/ (ratios from one run)"

$(STAMP): setup.cfg pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP)

# Tests start their own Mosquitto and PostgreSQL, render the coordinator dashboard in headless
# Chromium, and check deploy/ with shellcheck and systemd-analyze (the daemons also run under
# their units' seccomp filters, through libseccomp, and strace); install what is missing
# (Debian package names; needs root, otherwise say what to run).  Debian keeps initdb/pg_ctl
# in /usr/lib/postgresql/<version>/bin.
SYSTEM_TOOLS := mosquitto:mosquitto mosquitto_sub:mosquitto-clients shellcheck:shellcheck systemd-analyze:systemd strace:strace useradd:passwd initdb:postgresql pg_ctl:postgresql chromium:chromium
broker:
	@$(MAKE) --no-print-directory system-tools TOOLS="$(SYSTEM_TOOLS)" AGAIN="make test"

# `make demo` needs only the broker (the ledger, coordinator and agents are this package).
demo-tools:
	@$(MAKE) --no-print-directory system-tools TOOLS="mosquitto:mosquitto" AGAIN="make demo"

system-tools:
	@missing=""; for pair in $(TOOLS); do tool=$${pair%%:*}; pkg=$${pair#*:}; \
		command -v $$tool >/dev/null 2>&1 || test -x /usr/sbin/$$tool || ls /usr/lib/postgresql/*/bin/$$tool >/dev/null 2>&1 \
		|| case " $$missing " in *" $$pkg "*) ;; *) missing="$$missing $$pkg";; esac; done; \
	if [ -z "$$missing" ]; then :; \
	elif [ "$$(id -u)" = "0" ]; then \
		echo "installing$$missing (apt-get)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	else \
		echo "missing:$$missing; run  sudo apt-get install$$missing  then $(AGAIN) again"; exit 1; \
	fi

lint: $(STAMP)
	$(VENV)/bin/ruff check agent tests benchmarks
	$(VENV)/bin/ruff format --check agent tests benchmarks
	$(VENV)/bin/mypy agent

# Most of the suite waits on real processes (brokers, daemons, databases), so it runs on 3
# xdist workers; the CPU-bound modules (fuzzers, the flood, quantization) carry
# xdist_group("cpu") and run one after another on one worker.  The 30 slowest are listed.
test: $(STAMP) broker lint
	$(PY) -m pytest -q -n 3 --dist loadgroup --durations=30

demo: $(STAMP) demo-tools
	$(PY) -m agent demo

bench: $(STAMP)
	@for script in benchmarks/*.py; do echo "== $$script"; $(PY) $$script || exit 1; done

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache *.egg-info

# The cross-architecture checks (issue 11): a Debian bookworm arm64 root under qemu-user-static,
# built once into ARM64_ROOT (outside the git tree, reused), the package pip-installed there,
# tests/arm64 run inside against an x86 reference.  Needs root, like CI.
ARM64_ROOT ?= /var/cache/edgeproof/arm64-root-bookworm
ARM64_TOOLS := debootstrap:debootstrap qemu-aarch64-static:qemu-user-static update-binfmts:binfmt-support
arm64-tools:
	@missing=""; for pair in $(ARM64_TOOLS); do tool=$${pair%%:*}; pkg=$${pair#*:}; \
		command -v $$tool >/dev/null 2>&1 || test -x /usr/sbin/$$tool || missing="$$missing $$pkg"; done; \
	test -f /usr/share/keyrings/debian-archive-keyring.gpg || missing="$$missing debian-archive-keyring"; \
	if [ -z "$$missing" ]; then :; \
	elif [ "$$(id -u)" = "0" ]; then \
		echo "installing$$missing (apt-get)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	else \
		echo "missing:$$missing; run  sudo apt-get install$$missing  then make test-arm64 again"; exit 1; \
	fi

test-arm64: $(STAMP) arm64-tools
	ARM64_ROOT=$(ARM64_ROOT) bash tests/arm64/run.sh $(PY)
