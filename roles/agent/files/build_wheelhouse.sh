#!/usr/bin/env bash
# The agent's wheelhouse, built on the controller: the agent's wheel and a wheel of each of
# its dependencies (pinned by a constraints file), so that hosts install with
# `pip install --no-index --find-links DIR` and need no package index (air-gapped sites).
#
#   build_wheelhouse.sh PYTHON SOURCE DEST [CONSTRAINTS|-] [--with-build-backend] [-- PIP ARGS...]
#
# PYTHON builds the wheels: the hosts need the same Python version and machine (DEST/TARGET
# records them, "3.11 x86_64"; the agent role compares). SOURCE is the agent's project
# (pyproject.toml, README.md, src/); it is built from a clean copy. PIP ARGS go to `pip wheel`
# (such as `--no-index --find-links DIR` on a controller without an index).
#
# The agent's build backend is setuptools >= 77: PYTHON's own when it has one (no index
# needed), else pip's isolated build fetches it - from the index, or offline from a
# --find-links directory that holds it. --with-build-backend puts its wheel into DEST too, so
# DEST itself serves a later offline build (`make wheelhouse` does this).
#
# DEST is made in a private directory next to it and renamed into place: two runs sharing
# the parent (parallel scenarios) never see a half-made wheelhouse. An existing DEST is left
# as it is.
set -euo pipefail

if [ $# -lt 3 ]; then
	echo "usage: $0 PYTHON SOURCE DEST [CONSTRAINTS|-] [--with-build-backend] [-- PIP ARGS...]" >&2
	exit 2
fi
python=$1 source=$2 dest=$3
shift 3
constraints=-
if [ $# -gt 0 ] && [ "$1" != -- ] && [ "$1" != --with-build-backend ]; then
	constraints=$1
	shift
fi
backend=no
if [ $# -gt 0 ] && [ "$1" = --with-build-backend ]; then
	backend=yes
	shift
fi
if [ $# -gt 0 ] && [ "$1" = -- ]; then
	shift
fi

if [ -d "$dest" ]; then
	echo "wheelhouse: $dest exists"
	exit 0
fi
if [ ! -f "$source/pyproject.toml" ]; then
	echo "wheelhouse: no pyproject.toml in $source" >&2
	exit 1
fi
parent=$(dirname "$dest")
mkdir -p "$parent"
work=$(mktemp -d "$parent/.build-XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir "$work/source" "$work/wheels"
tar -C "$source" --exclude=__pycache__ --exclude='*.egg-info' -cf - pyproject.toml README.md src |
	tar -C "$work/source" -xf -

pip=("$python" -m pip --disable-pip-version-check)
isolation=()
if "$python" -c 'import sys, setuptools; sys.exit(int(setuptools.__version__.split(".")[0]) < 77)' \
	2>/dev/null; then
	isolation=(--no-build-isolation)
fi
cons=()
if [ "$constraints" != - ]; then
	cons=(-c "$constraints")
fi
if [ "$backend" = yes ]; then
	"${pip[@]}" download --quiet --no-deps --dest "$work/wheels" --only-binary=:all: "$@" 'setuptools>=77'
fi
"${pip[@]}" wheel --quiet "${isolation[@]}" "${cons[@]}" --wheel-dir "$work/wheels" "$@" "$work/source"
"$python" -c 'import platform, sys; print(f"{sys.version_info[0]}.{sys.version_info[1]} {platform.machine()}")' \
	>"$work/wheels/TARGET"
ls "$work/wheels"/hafleet_agent-*.whl >/dev/null
# Another run may have made DEST meanwhile: then its copy stays.
mv -T "$work/wheels" "$dest" 2>/dev/null || [ -d "$dest" ]
echo "wheelhouse: $dest ($(find "$dest" -name '*.whl' | wc -l) wheels for Python $(cat "$dest/TARGET"))"
