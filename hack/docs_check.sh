#!/usr/bin/env bash
# Renders the docs of every module, plugin and role of hafleet.cluster with ansible-doc and
# fails on an error or on any warning (ansible-doc prints problems with the docs as warnings).
# Needs ANSIBLE_COLLECTIONS_PATH to hold ansible_collections/hafleet/cluster (make docs-check).
set -euo pipefail
cd "$(dirname "$0")/.."
failed=0
checked=0
check() {
	local type=$1 name=$2 out err rc=0
	err=$(mktemp)
	out=$(ANSIBLE_NOCOLOR=1 ansible-doc -t "$type" "hafleet.cluster.$name" 2>"$err") || rc=$?
	if [ "$rc" -ne 0 ] || grep -qiE 'warning|error' "$err" || [ -z "$out" ]; then
		echo "docs-check: $type hafleet.cluster.$name: rc=$rc" >&2
		cat "$err" >&2
		failed=1
	fi
	rm -f "$err"
	checked=$((checked + 1))
}
for dir in plugins/*/; do
	type=$(basename "$dir")
	case "$type" in
	modules) type=module ;;
	module_utils | doc_fragments | plugin_utils) continue ;;
	esac
	for f in "$dir"*.py; do
		[ -e "$f" ] || continue
		name=$(basename "$f" .py)
		[ "$name" = __init__ ] && continue
		check "$type" "$name"
	done
done
for role in roles/*/; do
	[ -f "$role/meta/argument_specs.yml" ] && check role "$(basename "$role")"
done
# The collection's own listing must show every module without complaint.
err=$(mktemp)
ANSIBLE_NOCOLOR=1 ansible-doc -t module -l hafleet.cluster >/dev/null 2>"$err" || failed=1
if grep -qiE 'warning|error' "$err"; then cat "$err" >&2; failed=1; fi
rm -f "$err"
if [ "$failed" -ne 0 ]; then
	echo "docs-check: FAILED" >&2
	exit 1
fi
echo "docs-check: $checked module/plugin/role docs render without warnings"
