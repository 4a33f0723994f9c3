#!/usr/bin/env bash
# make ansible-lint, second half: ansible-lint as a Galaxy user meets it. Builds the collection
# tarball, installs it into an empty temporary collections path (outside the checkout, without
# its ansible.cfg) and runs ansible-lint in the installed copy with the production profile and
# none of the checkout's settings (.ansible-lint is not in the tarball). About 20 s.
set -euo pipefail
src=$(cd "$(dirname "$0")/.." && pwd)
export PATH="$src/.venv/bin:$PATH"
work=$(mktemp -d /tmp/hafleet-lint-installed.XXXXXX)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/dist" "$work/collections"
: >"$work/ansible.cfg"
export ANSIBLE_CONFIG="$work/ansible.cfg"
(cd "$src" && ansible-galaxy collection build --force --output-path "$work/dist" >/dev/null)
cd "$work"
ANSIBLE_COLLECTIONS_PATH="$work/collections" ansible-galaxy collection install --force --no-deps \
	--offline -p "$work/collections" "$work"/dist/hafleet-cluster-*.tar.gz >/dev/null 2>&1
installed="$work/collections/ansible_collections/hafleet/cluster"
[ -f "$installed/MANIFEST.json" ] || { echo "lint-installed: the collection did not install" >&2; exit 1; }
cd "$installed"
ANSIBLE_COLLECTIONS_PATH="$work/collections" ansible-lint --offline --profile production
echo "lint-installed: ansible-lint (production profile) passed on the installed collection"
