#!/usr/bin/env bash
# Install what `make bench` needs into the project's own places, idempotently:
# - Debian's etcd-server and etcd-client (etcd 3.4 on Debian 12) with apt-get, as root;
# - bench/.venv: Python 3.11 with the agent (editable) and pysyncobj, matplotlib, py-spy,
#   pinned by constraints.txt and bench/constraints.txt.
# Debian starts a system etcd (127.0.0.1:2379) where systemd runs; the bench never uses it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PYTHON=${PYTHON:-python3}
VENV=bench/.venv
STAMP=$VENV/.bench-installed
DEBS=(etcd-server etcd-client)

missing=()
for pkg in "${DEBS[@]}"; do
	if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q '^install ok installed$'; then
		missing+=("$pkg")
	fi
done
if ((${#missing[@]})); then
	if [[ $(id -u) != 0 ]]; then
		echo "bench/setup.sh: missing Debian packages: ${missing[*]}; install them as root" >&2
		exit 1
	fi
	echo "bench/setup.sh: apt-get install ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -q
	apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

if [[ ! -f $STAMP || constraints.txt -nt $STAMP || bench/constraints.txt -nt $STAMP ||
	agent/pyproject.toml -nt $STAMP ]]; then
	if [[ ! -x $VENV/bin/python ]]; then
		echo "bench/setup.sh: creating $VENV with $(command -v "$PYTHON") ($("$PYTHON" -V 2>&1))"
		"$PYTHON" -m venv "$VENV"
	fi
	"$VENV/bin/python" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' || {
		echo "bench/setup.sh: $VENV must use Python 3.11 (constraints.txt); remove it" >&2
		exit 1
	}
	pip=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check
		-c constraints.txt -c bench/constraints.txt)
	"${pip[@]}" pip
	"${pip[@]}" -e agent pysyncobj matplotlib py-spy
	touch "$STAMP"
fi
echo "bench/setup.sh: etcd $(etcd --version | head -1 | awk '{print $3}'), $VENV ready"
