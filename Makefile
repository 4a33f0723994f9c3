# hafleet: developer entry points. GNU make. `make help` lists the targets.
#
# `make test` works on a fresh Debian 12 machine as root: it installs the few Debian packages
# it needs, builds .venv from constraints.txt, then runs every check in order.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
.DELETE_ON_ERROR:
MAKEFLAGS += --no-builtin-rules

PYTHON ?= python3
ANSIBLE_TEST_PYTHON ?= 3.11
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
STAMP := $(VENV)/.hafleet-installed

# Tools installed into .venv, all pinned by constraints.txt.
VENV_TOOLS := ansible-core ansible-lint ruff pytest pytest-timeout pytest-xdist hypothesis \
	antsibull-changelog molecule mutmut
# prometheus: its promtool checks /metrics scrapes and the alert rules' tests (make pytest).
DEB_PACKAGES := haproxy iproute2 shellcheck nftables chromium prometheus

# ansible-test only runs inside a real .../ansible_collections/NAMESPACE/NAME directory.
COLLECTION_ROOT := build/ansible_collections
COLLECTION_DIR := $(COLLECTION_ROOT)/hafleet/cluster
# Left out of the copy that ansible-test checks: the junk that build_ignore leaves out too,
# the agent's Python project (agent/, tests/agent/, tests/chaos/, tests/support/, bench/) and
# the developer tools in hack/ (not in the tarball either; make lint holds them to ruff and
# shellcheck). The agent is a standalone asyncio application held to ruff and pytest; ansible-test's pylint
# profile encodes ansible-core's own conventions (no variable named `_`, ...) that do not
# apply to it.
COPY_EXCLUDES := ./.git ./.venv ./build ./dist ./.ansible ./tests/output '*/tests/output' \
	'__pycache__' '*.pyc' '.pytest_cache' '.ruff_cache' '.hypothesis' '*.egg-info' '*.tar.gz' \
	./agent ./tests/agent ./tests/chaos ./tests/support ./bench ./hack

# The copy sits inside this git work tree, where build/ is ignored: left to itself,
# ansible-test would find the outer .git and list no file. Naming the content root stops
# its search there, and it takes every file of the copy.
ANSIBLE_TEST := ANSIBLE_TEST_CONTENT_ROOT=$(CURDIR)/$(COLLECTION_DIR) ansible-test

TEST_STAGES := system-deps venv lint ansible-lint pytest sanity units molecule molecule-machines

# ansible-test and ansible-galaxy find their tools on PATH.
export PATH := $(BIN):$(PATH)

.PHONY: help test system-deps venv lint format pytest collection-copy ansible-test-shim \
	sanity units build constraints agent-constraints lab clean distclean sim bench-agent bench-balancer bench chaos \
	molecule release docs-check changelog \
	collection-link ansible-lint bench-scale vendor mutation wheelhouse machines machines-destroy \
	molecule-machines machines-e2e bench-balancer-ha

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/[$$](TEST_STAGES)/$(TEST_STAGES)/' \
		| awk -F':.*## ' '{printf "  make %-18s %s\n", $$1, $$2}'

test: ## every stage CI runs (.ci/run), in order: $(TEST_STAGES)
	@for stage in $(TEST_STAGES); do \
		start=$$(date +%s); \
		echo "==> make $$stage"; \
		if ! $(MAKE) --no-print-directory $$stage; then \
			echo "==> make $$stage FAILED after $$(( $$(date +%s) - start ))s"; \
			exit 1; \
		fi; \
		echo "==> make $$stage passed in $$(( $$(date +%s) - start ))s"; \
	done; \
	echo "==> make test: all stages passed ($(TEST_STAGES))"

system-deps: ## apt-get install the Debian packages that are missing (haproxy, iproute2, shellcheck, nftables, chromium, prometheus)
	@missing=""; \
	for pkg in $(DEB_PACKAGES); do \
		if ! dpkg-query -W -f='$${Status}' "$$pkg" 2>/dev/null | grep -q '^install ok installed$$'; then \
			missing="$$missing $$pkg"; \
		fi; \
	done; \
	if [ -z "$$missing" ]; then \
		echo "system-deps: all present ($(DEB_PACKAGES))"; \
		exit 0; \
	fi; \
	if [ "$$(id -u)" != 0 ]; then \
		echo "system-deps: missing Debian packages:$$missing; install them as root" >&2; \
		exit 1; \
	fi; \
	echo "system-deps: installing$$missing"; \
	export DEBIAN_FRONTEND=noninteractive; \
	apt-get update -q; \
	apt-get install -y -q --no-install-recommends $$missing

venv: $(STAMP) ## create .venv and install the pinned tools and the agent (editable)

$(STAMP): constraints.txt agent/pyproject.toml
	@if [ ! -x $(VENV)/bin/python ]; then \
		echo "venv: creating $(VENV) with $$(command -v $(PYTHON)) ($$($(PYTHON) -V 2>&1))"; \
		$(PYTHON) -m venv $(VENV); \
	fi
	@$(VENV)/bin/python -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' || { \
		echo "venv: $(VENV) must use Python 3.11 (ansible-core 2.19 and constraints.txt);" \
			"remove it and set PYTHON=python3.11" >&2; exit 1; }
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check -c constraints.txt pip
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check -c constraints.txt \
		$(VENV_TOOLS) -e 'agent[test]'
	@touch $@

lint: venv ## ruff check and ruff format --check; shellcheck of hack/*.sh
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	shellcheck hack/*.sh

format: venv ## ruff format and apply ruff's safe fixes
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# pytest exits with 5 when it collected no test: success here, and only that exit code.
# PYTEST_WORKERS test files run side by side (pytest-xdist, one file per worker at a time: a
# file's lab or cluster fixtures stay in one process); most tests wait on timers and
# processes, not the CPU. PYTEST_WORKERS=1 runs them one after the other.
PYTEST_WORKERS ?= 2
PYTEST_XDIST = $(if $(filter-out 1,$(PYTEST_WORKERS)),-n $(PYTEST_WORKERS) --dist loadfile,)
pytest: venv ## pytest tests/agent tests/chaos (PYTEST_WORKERS=2 files at a time)
	@rc=0; $(BIN)/pytest $(PYTEST_XDIST) tests/agent tests/chaos || rc=$$?; \
	if [ $$rc -eq 5 ]; then \
		echo "pytest: no tests collected in tests/agent tests/chaos (exit 5), treated as success"; \
	elif [ $$rc -ne 0 ]; then \
		exit $$rc; \
	fi

# The agent's API client is the collection's too: module_utils cannot import the agent (the
# modules run on managed nodes), so it holds a byte-identical copy (a pytest test in
# tests/agent/cluster/test_apiclient.py fails when the two differ).
VENDORED_CLIENT := plugins/module_utils/_api_client.py
vendor: ## copy agent/src/hafleet_agent/apiclient.py to plugins/module_utils/_api_client.py
	cp agent/src/hafleet_agent/apiclient.py $(VENDORED_CLIENT)
	@echo "vendor: $(VENDORED_CLIENT) is agent/src/hafleet_agent/apiclient.py"

# The agent's wheelhouse for hosts without a package index: the agent's wheel, its
# dependencies' wheels pinned by constraints.txt, and setuptools (the agent's build backend),
# so that the directory also serves an offline build: the agent role's
# agent_wheelhouse_pip_args="--no-index --find-links DIR". roles/agent/files/build_wheelhouse.sh,
# which the role runs on the controller too.
WHEELHOUSE := build/wheelhouse
wheelhouse: venv ## the agent's and its dependencies' wheels (agent/constraints.txt) + setuptools in build/wheelhouse
	rm -rf $(WHEELHOUSE)
	roles/agent/files/build_wheelhouse.sh $(BIN)/python agent $(WHEELHOUSE) agent/constraints.txt --with-build-backend

# A fresh copy each time, so files deleted from the work tree are gone from it too; its
# tests/output/ survives, as it holds the venv ansible-test builds for itself (a rerun then
# takes seconds, not a minute).
collection-copy: ## copy the tree to build/ansible_collections/hafleet/cluster for ansible-test
	@rm -rf build/.ansible-test-output
	@if [ -d $(COLLECTION_DIR)/tests/output ]; then \
		mv $(COLLECTION_DIR)/tests/output build/.ansible-test-output; \
	fi
	@rm -rf $(COLLECTION_DIR)
	@mkdir -p $(COLLECTION_DIR)
	@tar -cf - $(addprefix --exclude=,$(COPY_EXCLUDES)) . | tar -xf - -C $(COLLECTION_DIR)
	@if [ -d build/.ansible-test-output ]; then \
		mkdir -p $(COLLECTION_DIR)/tests; \
		mv build/.ansible-test-output $(COLLECTION_DIR)/tests/output; \
	fi
	@echo "collection-copy: $(COLLECTION_DIR)"

ansible-test-shim: venv ## put the offline pip bootstrap where ansible-test looks for it
	@$(BIN)/python hack/install_get_pip_shim.py

sanity: venv ansible-test-shim collection-copy ## ansible-test sanity --venv on the collection copy (no ignore file)
	cd $(COLLECTION_DIR) && $(ANSIBLE_TEST) sanity --venv --python $(ANSIBLE_TEST_PYTHON)

units: venv ansible-test-shim collection-copy ## ansible-test units --venv on the collection copy (tests/unit)
	cd $(COLLECTION_DIR) && $(ANSIBLE_TEST) units --venv --python $(ANSIBLE_TEST_PYTHON)

build: venv ## ansible-galaxy collection build into dist/
	mkdir -p dist
	ansible-galaxy collection build --force --output-path dist

# The freeze leaves setuptools out: .venv never installs it (the agent builds in isolation).
constraints: ## regenerate constraints.txt from an unpinned install into a throwaway venv
	@tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	$(PYTHON) -m venv "$$tmp/venv"; \
	"$$tmp/venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip; \
	"$$tmp/venv/bin/python" -m pip install --quiet --disable-pip-version-check \
		$(VENV_TOOLS) -e 'agent[test]'; \
	{ sed -n '/^#/p' constraints.txt; \
	  "$$tmp/venv/bin/python" -m pip freeze --all --exclude-editable | grep -v '^setuptools=='; \
	} > "$$tmp/constraints.txt"; \
	mv "$$tmp/constraints.txt" constraints.txt; \
	echo "constraints: wrote constraints.txt"
	$(MAKE) agent-constraints

agent-constraints: venv ## agent/constraints.txt: constraints.txt's pins of the agent's runtime dependencies (shipped in the collection)
	$(BIN)/python hack/agent_constraints.py

# The long simulator run: make sim SEEDS=10000 [NODES=5] [FAULTS=all] [STEPS=3000]
SEEDS ?= 10000
NODES ?= 5
FAULTS ?= all
STEPS ?= 3000
sim: venv ## the Raft simulator over many seeds: make sim SEEDS=10000 NODES=5
	$(BIN)/python -m hafleet_agent.sim --seeds 1..$(SEEDS) --nodes $(NODES) \
		--faults $(FAULTS) --steps $(STEPS) --stats

bench-agent: venv ## agent benchmarks: failover, join, writes, idle cost (about 5 minutes)
	$(BIN)/python bench/agent_bench.py

bench-balancer: venv ## HAProxy + syncer: req/s, weight commit -> applied, failed requests (about 3 minutes)
	$(BIN)/python bench/balancer_bench.py

bench-scale: venv ## time make lab NODES=7 from a fresh clone, --check --diff, 7->7, 7->3->7 under load, destroy (root; ~9 min)
	$(BIN)/python bench/scale_bench.py

# The balancers' virtual address on machines (root; bench/balancer_ha_bench.py): 3 pool + 2
# balancer machines (hfbha-, hfbha1, 10.79.50.0/24), the holder's power cut under load, N trials,
# beside keepalived's defaults; prints vip-failover: ...; writes docs/benchmarks.md.
bench-balancer-ha: venv collection-link ## VIP failover on 2 balancer machines vs keepalived's defaults (root; ~15 min)
	@$(MAKE) --no-print-directory system-deps DEB_PACKAGES="$(MACHINES_DEB_PACKAGES)"
	bench/setup.sh
	bench/.venv/bin/python bench/balancer_ha_bench.py

bench: venv ## hafleet vs etcd, PySyncObj; scale.yml -> docs/benchmarks.md (~30-45 min; BENCH_QUICK=1: ~7)
	bench/setup.sh
	bench/.venv/bin/python bench/compare.py $(if $(BENCH_QUICK),--quick)

# The long chaos runs (root): every scenario of tests/chaos CHAOS_RUNS times against real
# agents in lab namespaces (about 45 minutes), then the fuzzers with FUZZ_EXAMPLES examples.
# The agents run with mutual TLS and the HTTPS API (CHAOS_TLS=0: plain), and the attacks on
# the HMAC layer run once more without TLS (forged_peer_plain, replay_tamper_plain).
CHAOS_RUNS ?= 20
FUZZ_EXAMPLES ?= 5000
CHAOS_TLS ?= 1
chaos: venv system-deps ## chaos scenarios on real agents (root), TLS on (CHAOS_TLS=0: off), CHAOS_RUNS=20 runs each, then FUZZ_EXAMPLES=5000 fuzzing
	@rc=0; start=$$(date +%s); \
	CHAOS_TLS=$(CHAOS_TLS) PYTHONPATH=$(CURDIR)/tests/support $(BIN)/python tests/chaos/run_chaos.py \
		--runs $(CHAOS_RUNS) --json build/chaos-report.json \
		|| rc=$$?; \
	HFCH_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(BIN)/pytest -p no:cacheprovider -q \
		tests/chaos/test_chaos_fuzz.py || rc=$$?; \
	echo "chaos: scenarios and fuzzing took $$(( $$(date +%s) - start ))s, exit $$rc"; \
	exit $$rc

# ansible-playbook and ansible-lint find the collection as hafleet.cluster through a link to
# this checkout (ansible.cfg names the same path); ansible-test needs a real copy instead.
COLLECTION_LINK_ROOT := build/collections
collection-link: ## link build/collections/ansible_collections/hafleet/cluster to this checkout
	@mkdir -p $(COLLECTION_LINK_ROOT)/ansible_collections/hafleet
	@ln -sfn ../../../.. $(COLLECTION_LINK_ROOT)/ansible_collections/hafleet/cluster

# Then the same on the installed tarball, as a Galaxy user runs it: no .ansible-lint, no
# ansible.cfg, every file the tarball ships (hack/lint_installed.sh, about 20 s).
ansible-lint: venv collection-link ## ansible-lint, production profile (.ansible-lint), then on the installed tarball
	ANSIBLE_COLLECTIONS_PATH=$(CURDIR)/$(COLLECTION_LINK_ROOT) $(BIN)/ansible-lint
	hack/lint_installed.sh

# make lab NODES=7: NODES from the command line or the environment; 3 otherwise (the
# NODES ?= 5 above is make sim's). LAB_ARGS: more ansible-playbook arguments, such as
# LAB_ARGS="-e hafleet_strategy=leastconn".
LAB_NODES = $(if $(filter command line environment environment override,$(origin NODES)),$(NODES),3)
LAB_ARGS ?=
lab: system-deps venv collection-link ## bring up N lab nodes behind HAProxy (root): make lab NODES=7
	ANSIBLE_COLLECTIONS_PATH=$(CURDIR)/$(COLLECTION_LINK_ROOT) \
		$(BIN)/ansible-playbook playbooks/scale.yml -e nodes=$(LAB_NODES) $(LAB_ARGS)
	ANSIBLE_COLLECTIONS_PATH=$(CURDIR)/$(COLLECTION_LINK_ROOT) \
		$(BIN)/ansible-playbook playbooks/status.yml $(LAB_ARGS)

# The machines lab (root; docs/machines.md): NODES pool machines (3 unless given) and BALANCERS
# balancer machines, Debian 12 with systemd and sshd in systemd-nspawn containers on a bridge of
# their own; writes build/machines/hosts.yml. A lab beside the default one: MACHINES_PREFIX=hfmx-
# MACHINES_BRIDGE=hfmx1 MACHINES_SUBNET=10.79.9.0/24 (its files: build/machines-hfmx/).
BALANCERS ?= 1
MACHINES_PREFIX ?= hafleet-
MACHINES_BRIDGE ?= hafleet1
MACHINES_SUBNET ?= 10.78.0.0/24
MACHINES_OUT ?=
MACHINES_DEB_PACKAGES := debootstrap systemd-container apt-cacher-ng nftables iproute2 openssh-client
MACHINES_ARGS = --prefix $(MACHINES_PREFIX) --bridge $(MACHINES_BRIDGE) --subnet $(MACHINES_SUBNET) \
	$(if $(MACHINES_OUT),--out $(MACHINES_OUT))
machines: venv collection-link ## Debian 12 machines over SSH (root): make machines NODES=3 BALANCERS=1 -> build/machines/hosts.yml
	@$(MAKE) --no-print-directory system-deps DEB_PACKAGES="$(MACHINES_DEB_PACKAGES)"
	$(BIN)/python hack/machines.py up --nodes $(LAB_NODES) --balancers $(BALANCERS) $(MACHINES_ARGS)

machines-destroy: venv ## remove every machine, namespace, link, mount, cgroup, process and file of make machines
	$(BIN)/python hack/machines.py down $(MACHINES_ARGS)

# Molecule scenarios (extensions/molecule: molecule's collection-level layout), each on its own
# bridge and namespaces in 10.83.0.0/16, never the lab's: lab, agent, balancer, scale. Root.
# docs/molecule.md. Two lanes side by side (the scenarios never share a name, an address or
# a port), about 250 s each; one scenario: make molecule MOLECULE_LANES=agent; one after
# the other: make molecule MOLECULE_LANES="'scale lab agent balancer'".
MOLECULE_LANES ?= 'scale lab' 'agent balancer'
molecule: system-deps venv ## molecule test of every scenario (root): roles lab, agent, balancer, the scale flow
	@mkdir -p build/collections/ansible_collections/hafleet
	@ln -sfn ../../../.. build/collections/ansible_collections/hafleet/cluster
	@hack/molecule_lanes.sh $(BIN) $(MOLECULE_LANES)

# The machines scenario (root; docs/molecule.md): playbooks/scale.yml -e provider=inventory
# -e nodes=3 over SSH against 3 pool machines and a balancer machine of make machines' kind
# (prefix hfmolm-, bridge hfmolm1, 10.79.20.0/24; the rootfs built once, then shared), a rerun
# with changed=0, verify (systemd, voters, traffic through the balancer machine, kill -9), destroy.
# Not part of make test.
molecule-machines: venv ## molecule test -s machines (root): the real-host path on machines over SSH
	@$(MAKE) --no-print-directory system-deps DEB_PACKAGES="$(MACHINES_DEB_PACKAGES)"
	@mkdir -p build/collections/ansible_collections/hafleet
	@ln -sfn ../../../.. build/collections/ansible_collections/hafleet/cluster
	@hack/molecule_lanes.sh $(BIN) machines

# The release path, from the built tarball alone (root): build it, install it into an empty
# collections path, run hafleet.cluster.scale with nodes=3 from outside the source tree (the agent
# is built from the agent/ inside the tarball), then hafleet.cluster.destroy. hack/release.sh.
release: system-deps venv ## build the tarball, install it into a temp path, scale a lab to 3 from it, destroy
	hack/release.sh

# The real-host path end to end from the released tarball (root; docs/machines.md): 5 pool + 2
# balancer machines (hfe2e-, bridge hfe2e1, 10.79.30.0/24) with a virtual address (keepalived),
# scale 0->5, 5->5 (changed=0), 5->3->5 under load through the virtual address with 0 failed
# requests (each leaving node drained by both balancers first), a reboot, a rolling upgrade to
# the next version under load (0 failed), destroy, down.
machines-e2e: venv ## the installed tarball on 5+2 machines (VIP): scale, load, reboot, rolling upgrade, destroy (root)
	@$(MAKE) --no-print-directory system-deps DEB_PACKAGES="$(MACHINES_DEB_PACKAGES)"
	hack/machines_e2e.sh

# Every module's and plugin's docs render with ansible-doc, without a warning.
docs-check: venv ## ansible-doc renders every module, plugin and role without warnings
	@mkdir -p build/collections/ansible_collections/hafleet
	@ln -sfn ../../../.. build/collections/ansible_collections/hafleet/cluster
	ANSIBLE_COLLECTIONS_PATH=$(CURDIR)/build/collections hack/docs_check.sh

# changelogs/changelog.yaml and CHANGELOG.rst regenerated from changelogs/fragments as galaxy.yml's
# version (in a throwaway copy: the fragments stay).
changelog: venv ## regenerate changelogs/changelog.yaml from the fragments (antsibull-changelog)
	hack/changelog.sh

# Mutation testing (docs/mutation.md): mutmut, pinned by constraints.txt and installed on first
# use, over the fast tests, in a copy of the tree (build/mutation): the work tree is never
# mutated. One line per module, then as the last line: mutation: score=NN.N% killed=K survived=S.
# A few modules: make mutation MUTATION_MODULES="codec.py raft/log.py".
MUTATION_MODULES ?=
MUTATION_JOBS ?= 2
mutation: venv ## mutmut over the fast tests: every pure module >= 90 % of its mutants killed
	@$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt mutmut
	@$(BIN)/python hack/mutation.py --jobs $(MUTATION_JOBS) \
		$(addprefix --module ,$(MUTATION_MODULES))

clean: ## remove build products, test outputs and caches (keeps .venv)
	rm -rf build dist agent/build tests/output .pytest_cache .ruff_cache .hypothesis
	find . -path ./$(VENV) -prune -o \( -name __pycache__ -o -name '*.egg-info' \) -type d \
		-print -exec rm -rf {} +

distclean: clean ## clean, and remove .venv
	rm -rf $(VENV)
