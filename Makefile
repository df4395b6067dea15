# wsfs — developer entry points.  `make help` lists the targets.
# Works on a fresh Debian 12 (as root, or as a user with sudo); every target
# is idempotent and the second run is quick (stamp file in .venv/).

.DEFAULT_GOAL := help

PYTHON      ?= python3
VENV        := .venv
VENV_STAMP  := $(VENV)/.installed
WSFS        := $(VENV)/bin/wsfs
PYTEST_ARGS ?= -q

# Root gets system-wide defaults, everyone else per-user ones (SPEC §2).
ifeq ($(shell id -u),0)
MOUNT ?= /mnt/wsfs
DATA  ?= /var/lib/wsfs
else
MOUNT ?= $(HOME)/wsfs
DATA  ?= $(or $(XDG_DATA_HOME),$(HOME)/.local/share)/wsfs
endif

# Use sudo for apt only when not root and sudo exists.
SUDO := $(shell if [ "$$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then echo sudo; fi)

.PHONY: help system-deps venv run stop test clean

help:
	@echo "wsfs make targets:"
	@echo "  make system-deps   install fuse3 + libfuse3-3 (and python3-venv) via apt if missing"
	@echo "  make venv          create .venv and pip install -e '.[test]' (re-runs when pyproject.toml changes)"
	@echo "  make run           mount wsfs at MOUNT=$(MOUNT) with DATA=$(DATA)"
	@echo "  make stop          unmount MOUNT"
	@echo "  make test          run the test suite (PYTEST_ARGS='$(PYTEST_ARGS)')"
	@echo "  make clean         remove .venv, build artefacts and caches"

system-deps:
	@PATH="$$PATH:/usr/sbin:/sbin"; need=""; \
	command -v fusermount3 >/dev/null 2>&1 || need="$$need fuse3"; \
	ldconfig -p 2>/dev/null | grep -q libfuse3.so.3 || need="$$need libfuse3-3"; \
	if [ ! -x $(VENV)/bin/python ] && ! $(PYTHON) -c 'import venv, ensurepip' >/dev/null 2>&1; then \
		need="$$need python3 python3-venv"; \
	fi; \
	if [ -n "$$need" ]; then \
		if [ "$$(id -u)" -ne 0 ] && [ -z "$(SUDO)" ]; then \
			echo "system-deps: missing$$need; run as root or install sudo" >&2; exit 1; \
		fi; \
		if ! command -v apt-get >/dev/null 2>&1; then \
			echo "system-deps: missing$$need and apt-get not found; install them by hand" >&2; exit 1; \
		fi; \
		echo "system-deps: installing fuse3 libfuse3-3$$need"; \
		$(SUDO) apt-get update && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y fuse3 libfuse3-3 $$need; \
	fi

venv: $(VENV_STAMP)

# Order-only on system-deps: python3-venv must exist before `python3 -m venv`.
$(VENV_STAMP): pyproject.toml | system-deps
	@if [ ! -x $(VENV)/bin/pip ]; then \
		echo "venv: creating $(VENV) with $(PYTHON)"; \
		rm -rf $(VENV) && $(PYTHON) -m venv $(VENV); \
	fi
	$(VENV)/bin/python -m pip install -q --upgrade pip
	$(VENV)/bin/python -m pip install -q -e '.[test]'
	@touch $@

run: system-deps venv
	@PATH="$$PATH:/usr/sbin:/sbin"; \
	if grep -qs " $(MOUNT) fuse" /proc/self/mounts && ! stat "$(MOUNT)" >/dev/null 2>&1; then \
		echo "run: $(MOUNT) is a stale FUSE mount; detaching it"; \
		fusermount3 -uz "$(MOUNT)" 2>/dev/null || umount -l "$(MOUNT)"; \
	fi; \
	mkdir -p "$(MOUNT)"; \
	if mountpoint -q "$(MOUNT)"; then \
		echo "run: $(MOUNT) is already mounted; not mounting again"; \
	else \
		$(WSFS) mount "$(MOUNT)" --data "$(DATA)" || exit $$?; \
		echo "run: wsfs mounted at $(MOUNT) (data in $(DATA))"; \
	fi
	@echo ""
	@echo "Try this:"
	@echo "  cd $(MOUNT)"
	@echo "  mkdir workspaces/demo"
	@echo "  echo hello > workspaces/demo/output/hello.txt"
	@echo "  echo completed > workspaces/demo/.state"
	@echo "  cat workspaces/demo/receipt.json"
	@echo "  $(CURDIR)/$(WSFS) list --mount $(MOUNT)"
	@echo ""
	@echo "Stop it with: make stop   (or: $(CURDIR)/$(WSFS) unmount $(MOUNT))"

stop:
	@PATH="$$PATH:/usr/sbin:/sbin"; \
	if mountpoint -q "$(MOUNT)" 2>/dev/null; then \
		if [ -x $(WSFS) ]; then $(WSFS) unmount "$(MOUNT)"; \
		else fusermount3 -u "$(MOUNT)"; fi && echo "stop: unmounted $(MOUNT)"; \
	else \
		echo "stop: $(MOUNT) is not mounted"; \
	fi

test: system-deps venv
	@-PATH="$$PATH:/usr/sbin:/sbin" modprobe fuse 2>/dev/null || true
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .hypothesis
	find . -path ./.git -prune -o -type d -name __pycache__ -prune -exec rm -rf {} +
