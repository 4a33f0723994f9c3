#!/usr/bin/env bash
# make changelog: regenerates changelogs/changelog.yaml and CHANGELOG.rst from scratch out of
# changelogs/fragments, as the release of galaxy.yml's version. antsibull-changelog runs in a
# throwaway copy of the collection (it needs a real ansible_collections/hafleet/cluster tree
# and ansible-doc for the plugin list; its `release` would also delete the fragments), and
# only the two generated files come back. Deterministic: the same fragments give the same file.
set -euo pipefail
src=$(cd "$(dirname "$0")/.." && pwd)
export PATH="$src/.venv/bin:$PATH"
version=$(sed -n 's/^version: *//p' "$src/galaxy.yml")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
copy="$work/ansible_collections/hafleet/cluster"
mkdir -p "$copy"
tar -C "$src" -cf - galaxy.yml README.md meta plugins roles playbooks changelogs | tar -C "$copy" -xf -
printf -- '---\nancestor: null\nreleases: {}\n' >"$copy/changelogs/changelog.yaml"
cd "$copy"
antsibull-changelog lint
ANSIBLE_COLLECTIONS_PATH="$work" antsibull-changelog release --version "$version" \
	--date "$(git -C "$src" log -1 --format=%cs 2>/dev/null || date +%F)"
cp changelogs/changelog.yaml "$src/changelogs/changelog.yaml"
cp CHANGELOG.rst "$src/CHANGELOG.rst"
echo "changelog: changelogs/changelog.yaml and CHANGELOG.rst for $version from $(find "$src/changelogs/fragments" -name "*.yml" | wc -l) fragments"
