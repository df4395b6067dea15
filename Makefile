# wsfs — developer entry points.  `make help` lists the targets.
# Works on a fresh Debian 12 (as root, or as a user with sudo); every target
# is idempotent and the second run is quick (stamp file in .venv/).

.DEFAULT_GOAL := help

PYTHON      ?= python3
VENV        := .venv
VENV_STAMP  := $(VENV)/.installed
LIBFUSE_STAMP := $(VENV)/.libfuse
WSFS        := $(VENV)/bin/wsfs
PYTEST_ARGS ?= -q
BENCH_ARGS  ?=

# Root gets system-wide defaults, everyone else per-user ones (docs/spec.md §2).
ifeq ($(shell id -u),0)
MOUNT ?= /mnt/wsfs
DATA  ?= /var/lib/wsfs
else
MOUNT ?= $(HOME)/wsfs
DATA  ?= $(or $(XDG_DATA_HOME),$(HOME)/.local/share)/wsfs
endif

# `make install` (docs/spec.md §11): the package in its own virtualenv under PREFIX,
# the units where systemd looks for any PREFIX, the sample config once.
# DESTDIR stages everything under another root (packaging, tests).
PREFIX     ?= /usr/local
SYSCONFDIR ?= /etc
UNITDIR    ?= $(SYSCONFDIR)/systemd/system
INSTALL_LIB := $(DESTDIR)$(PREFIX)/lib/wsfs
INSTALL_BIN := $(DESTDIR)$(PREFIX)/bin
INSTALL_DOC := $(DESTDIR)$(PREFIX)/share/doc/wsfs
INSTALL_COMPLETION := $(DESTDIR)$(PREFIX)/share/bash-completion/completions
UNITS := wsfs.service wsfs@.service

# Use sudo for apt only when not root and sudo exists.
SUDO := $(shell if [ "$$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then echo sudo; fi)

.PHONY: help system-deps venv libfuse run stop clean-run test test-core lint stress bench clean install uninstall

help:
	@echo "wsfs make targets:"
	@echo "  make system-deps   install fuse3 + libfuse3-3 (and python3-venv, git) via apt if missing"
	@echo "  make venv          create .venv and pip install -e '.[test]' (re-runs when pyproject.toml changes)"
	@echo "  make libfuse       build libfuse 3.17 into .venv when the system's is older (kernel passthrough)"
	@echo "  make run           mount wsfs at MOUNT=$(MOUNT) with DATA=$(DATA)"
	@echo "  make stop          unmount MOUNT"
	@echo "  make clean-run     remove the wsfs link make run put on PATH"
	@echo "  make test          lint, then the whole test suite (PYTEST_ARGS='$(PYTEST_ARGS)')"
	@echo "  make test-core     lint, then the tests that need no FUSE mount (half a minute)"
	@echo "  make lint          ruff and mypy"
	@echo "  make stress        the stress suites (tests/stress/test_stress_*.py) at full size: crash matrix, concurrency, fsx ..."
	@echo "  make bench         benchmark wsfs against the bare disk, libfuse's passthrough_hp and bindfs (BENCH_ARGS='--quick', '--only 1,3' ...)"
	@echo "  make install       install wsfs, its systemd units and /etc/wsfs/wsfs.toml (PREFIX=$(PREFIX), DESTDIR=$(DESTDIR))"
	@echo "  make uninstall     remove what make install put in place (keeps data dirs and an edited config)"
	@echo "  make clean         remove .venv, build artefacts and caches"

system-deps:
	@PATH="$$PATH:/usr/sbin:/sbin"; need=""; \
	command -v fusermount3 >/dev/null 2>&1 || need="$$need fuse3"; \
	ldconfig -p 2>/dev/null | grep -q libfuse3.so.3 || need="$$need libfuse3-3"; \
	command -v git >/dev/null 2>&1 || need="$$need git"; \
	if [ -n "$(NEED_TEST_TOOLS)" ]; then \
		command -v systemd-analyze >/dev/null 2>&1 || need="$$need systemd"; \
		command -v setfattr >/dev/null 2>&1 || need="$$need attr"; \
		command -v jq >/dev/null 2>&1 || need="$$need jq"; \
		command -v getfacl >/dev/null 2>&1 || need="$$need acl"; \
		command -v slurmd >/dev/null 2>&1 || need="$$need slurm-wlm munge"; \
	fi; \
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

venv: $(VENV_STAMP) $(LIBFUSE_STAMP)

# Kernel passthrough needs libfuse >= 3.17; Debian 12 has 3.14.  tools/build-libfuse.sh builds
# Debian trixie's into .venv/lib/wsfs-libfuse (wsfs loads it from there), or says why not and
# wsfs runs on the system's.  Once per venv: `rm .venv/.libfuse` to try again.
libfuse: $(LIBFUSE_STAMP)

$(LIBFUSE_STAMP): | $(VENV_STAMP)
	@tools/build-libfuse.sh $(VENV)
	@touch $@

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
	@bindir=$$( [ "$$(id -u)" -eq 0 ] && echo /usr/local/bin || echo "$$HOME/.local/bin" ); \
	link="$$bindir/wsfs"; \
	if [ -e "$$link" ] && [ ! -L "$$link" ]; then \
		echo "run: $$link exists (make install's?); left alone: type $(CURDIR)/$(WSFS) for this checkout's"; \
	else \
		mkdir -p "$$bindir" && ln -sfn "$(CURDIR)/$(WSFS)" "$$link" && \
		echo "run: wsfs is on your PATH as $$link (a link to $(CURDIR)/$(WSFS); make clean-run removes it)"; \
		case ":$$PATH:" in *":$$bindir:"*) ;; *) echo "run: add $$bindir to your PATH to type wsfs";; esac; \
	fi
	@echo ""
	@echo "Try this:"
	@echo "  cd $(MOUNT)"
	@echo "  mkdir workspaces/demo"
	@echo "  echo hello > workspaces/demo/output/hello.txt"
	@echo "  echo completed > workspaces/demo/.state"
	@echo "  cat workspaces/demo/receipt.json"
	@echo "  wsfs list"
	@echo ""
	@echo "Stop it with: make stop   (or: wsfs unmount $(MOUNT))"

stop:
	@PATH="$$PATH:/usr/sbin:/sbin"; \
	if mountpoint -q "$(MOUNT)" 2>/dev/null; then \
		if [ -x $(WSFS) ]; then $(WSFS) unmount "$(MOUNT)"; \
		else fusermount3 -u "$(MOUNT)"; fi && echo "stop: unmounted $(MOUNT)"; \
	else \
		echo "stop: $(MOUNT) is not mounted"; \
	fi

# The link `make run` put on PATH, when it still points into this checkout.
clean-run:
	@for link in /usr/local/bin/wsfs "$$HOME/.local/bin/wsfs"; do \
		if [ -L "$$link" ] && [ "$$(readlink "$$link")" = "$(CURDIR)/$(WSFS)" ]; then rm -f "$$link" && echo "clean-run: removed $$link"; fi; \
	done

# The tests run `systemd-analyze verify` on the units (the systemd package brings it),
# `setfattr` as another user (attr), `getfacl` (acl: the sharing tests), jq (the README's
# examples) and a one-node Slurm
# (slurm-wlm, munge); a target-specific variable, so system-deps sees it only
# for `make test` and `make stress`.
test stress: NEED_TEST_TOOLS := yes
test: system-deps venv lint
	@-PATH="$$PATH:/usr/sbin:/sbin" modprobe fuse 2>/dev/null || true
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

# The tests that need no FUSE mount (about half a minute): tests/unit, tests/core (the core, and the
# FUSE operations driven directly) and the stress tests that do not mount.  Every test in
# tests/mount is marked `mount`; one elsewhere that mounts unmarked fails (tests/conftest.py).
test-core: venv lint
	$(VENV)/bin/python -m pytest -m "not mount" $(PYTEST_ARGS)

# ruff on everything, mypy on the whole package (pyproject.toml)
lint: venv
	$(VENV)/bin/ruff check wsfs tests bench
	$(VENV)/bin/mypy

# WSFS_STRESS=full: 200+ kill points, 100,000 fsx operations, a long concurrency run (about half an hour
# here).  `make test` runs the same files short and seeded; WSFS_SEED=N replays a run (each prints its seed).
stress: system-deps venv
	@-PATH="$$PATH:/usr/sbin:/sbin" modprobe fuse 2>/dev/null || true
	WSFS_STRESS=full WSFS_REQUIRE_FUSE=1 $(VENV)/bin/python -m pytest -s --timeout=0 $(PYTEST_ARGS) tests/stress

install: system-deps
	@set -e; \
	echo "install: wsfs into $(INSTALL_LIB)/venv"; \
	rm -rf "$(INSTALL_LIB)/venv"; \
	mkdir -p "$(INSTALL_LIB)"; \
	$(PYTHON) -m venv "$(INSTALL_LIB)/venv"; \
	"$(INSTALL_LIB)/venv/bin/python" -m pip install -q --disable-pip-version-check --no-warn-script-location "$(CURDIR)"; \
	WSFS_LIBFUSE_FROM="$(CURDIR)/$(VENV)/lib/wsfs-libfuse" tools/build-libfuse.sh "$(INSTALL_LIB)/venv"; \
	install -d "$(INSTALL_BIN)"; \
	printf '%s\n' '#!/bin/sh' \
		'# wsfs, put here by `make install`: the package lives in its own virtualenv.' \
		'here=$$(dirname "$$(readlink -f "$$0")")' \
		'exec "$$here/../lib/wsfs/venv/bin/python" -I -m wsfs "$$@"' > "$(INSTALL_BIN)/wsfs"; \
	chmod 0755 "$(INSTALL_BIN)/wsfs"; \
	echo "install: $(INSTALL_BIN)/wsfs"; \
	install -d "$(DESTDIR)$(UNITDIR)"; \
	for unit in $(UNITS); do \
		sed -e 's|/usr/local/bin/wsfs|$(PREFIX)/bin/wsfs|g' -e 's|/usr/local/share/doc/wsfs|$(PREFIX)/share/doc/wsfs|g' \
			"systemd/$$unit" > "$(DESTDIR)$(UNITDIR)/$$unit"; \
		chmod 0644 "$(DESTDIR)$(UNITDIR)/$$unit"; \
		echo "install: $(DESTDIR)$(UNITDIR)/$$unit"; \
	done; \
	install -d "$(DESTDIR)$(SYSCONFDIR)/wsfs"; \
	if [ -e "$(DESTDIR)$(SYSCONFDIR)/wsfs/wsfs.toml" ]; then \
		echo "install: kept the existing $(DESTDIR)$(SYSCONFDIR)/wsfs/wsfs.toml"; \
	else \
		install -m 0644 etc/wsfs.toml "$(DESTDIR)$(SYSCONFDIR)/wsfs/wsfs.toml"; \
		echo "install: $(DESTDIR)$(SYSCONFDIR)/wsfs/wsfs.toml (the commented sample)"; \
	fi; \
	install -d "$(INSTALL_LIB)/slurm"; \
	install -m 0755 slurm/prolog slurm/task-prolog slurm/epilog "$(INSTALL_LIB)/slurm/"; \
	install -m 0644 slurm/wsfs-slurm.sh "$(INSTALL_LIB)/slurm/"; \
	echo "install: $(INSTALL_LIB)/slurm/{prolog,task-prolog,epilog} (README: Running on a cluster)"; \
	install -d "$(INSTALL_DOC)" "$(INSTALL_COMPLETION)"; \
	install -m 0644 README.md "$(INSTALL_DOC)/"; \
	_WSFS_COMPLETE=bash_source "$(INSTALL_BIN)/wsfs" > "$(INSTALL_COMPLETION)/wsfs"; \
	"$(INSTALL_BIN)/wsfs" --version
	@echo ""
	@echo "Next: edit $(SYSCONFDIR)/wsfs/wsfs.toml, then"
	@echo "  systemctl daemon-reload && systemctl enable --now wsfs"
	@echo "(after an upgrade: systemctl restart wsfs)"

uninstall:
	@set -e; \
	rm -rf "$(INSTALL_LIB)" "$(INSTALL_DOC)"; \
	rm -f "$(INSTALL_BIN)/wsfs" "$(INSTALL_COMPLETION)/wsfs"; \
	for unit in $(UNITS); do rm -f "$(DESTDIR)$(UNITDIR)/$$unit"; done; \
	config="$(DESTDIR)$(SYSCONFDIR)/wsfs/wsfs.toml"; \
	if [ -e "$$config" ] && ! cmp -s etc/wsfs.toml "$$config"; then \
		echo "uninstall: kept $$config (it was edited)"; \
	else \
		rm -f "$$config"; rmdir "$(DESTDIR)$(SYSCONFDIR)/wsfs" 2>/dev/null || true; \
	fi; \
	echo "uninstall: removed wsfs from $(DESTDIR)$(PREFIX) and its units from $(DESTDIR)$(UNITDIR)"; \
	echo "uninstall: data dirs (/var/lib/wsfs*) are kept; stop running mounts first (systemctl disable --now wsfs)"

# Writes bench/results.json and prints the table; see bench/run.py for the workloads.
# BENCH_ARGS: --quick (small sizes), --runs N, --only 1,3, --dir DIR (default /var/tmp/wsfs-bench),
# --profile 1,3,4 (py-spy the daemon instead; installs py-spy into the venv).
bench: system-deps venv
	@PATH="$$PATH:/usr/sbin:/sbin"; need=""; \
	for tool in bindfs rsync; do command -v $$tool >/dev/null 2>&1 || need="$$need $$tool"; done; \
	if [ -n "$$need" ]; then \
		if [ "$$(id -u)" -ne 0 ] && [ -z "$(SUDO)" ]; then \
			echo "bench: missing$$need; run as root or install sudo" >&2; exit 1; \
		fi; \
		echo "bench: installing$$need"; \
		$(SUDO) apt-get update && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y $$need || exit $$?; \
	fi
	@-PATH="$$PATH:/usr/sbin:/sbin" modprobe fuse 2>/dev/null || true
	@case "$(BENCH_ARGS)" in *--profile*) \
		[ -x $(VENV)/bin/py-spy ] || $(VENV)/bin/python -m pip install -q py-spy;; esac
	$(VENV)/bin/python bench/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .hypothesis
	find . -path ./.git -prune -o -type d -name __pycache__ -prune -exec rm -rf {} +
