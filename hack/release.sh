#!/usr/bin/env bash
# make release: the release path from the built tarball alone (root).
#
# 1. ansible-galaxy collection build -> dist/hafleet-cluster-<version>.tar.gz
# 2. check the tarball: what the collection needs is in it (roles, plugins, playbooks, the
#    agent's source), what it must not ship is not (venvs, build trees, caches, dev tooling,
#    the benchmarks)
# 3. install it with --no-deps into an empty temporary collections path
# 4. from a directory outside the source tree, with only that path: ansible-playbook
#    hafleet.cluster.scale -e nodes=3 (the agent is built from agent/ inside the installed
#    collection), hafleet.cluster.status, then hafleet.cluster.destroy
# The lab uses its own names (hfmolr0, 10.83.5.0/24, hfmol-r1..3, HAProxy on 127.0.0.1:18385).
# Everything is removed at the end, also after a failure.
set -euo pipefail
src=$(cd "$(dirname "$0")/.." && pwd)
venv_bin="$src/.venv/bin"
export PATH="$venv_bin:$PATH"
version=$(sed -n 's/^version: *//p' "$src/galaxy.yml")
tarball="$src/dist/hafleet-cluster-$version.tar.gz"
work=$(mktemp -d /tmp/hafleet-release.XXXXXX)
lab_root=/var/tmp/hfmol/release

cleanup() {
	local rc=$?
	echo "release: cleaning up"
	if [ -d "$work/collections/ansible_collections/hafleet/cluster" ]; then
		(cd "$work/run" && ansible-playbook hafleet.cluster.destroy -e @"$work/run/vars.yml" >"$work/destroy-on-exit.log" 2>&1) || true
	fi
	# Whatever the destroy playbook left (a failed run): by name and pid file, never broadly.
	python3 "$src/extensions/molecule/shared/labnet.py" down --bridge hfmolr0 --prefix hfmol-r \
		--veth hfmolrv --root "$lab_root" >/dev/null || true
	rm -rf "$work"
	exit "$rc"
}
trap cleanup EXIT

echo "release: building $tarball"
mkdir -p "$src/dist"
(cd "$src" && ansible-galaxy collection build --force --output-path dist >/dev/null)

echo "release: checking the tarball's contents"
tar -tzf "$tarball" | sed 's|^\./||' | sort >"$work/contents"
for need in MANIFEST.json FILES.json README.md meta/runtime.yml \
	meta/execution-environment.yml meta/ee-requirements.txt meta/ee-bindep.txt \
	playbooks/scale.yml playbooks/status.yml playbooks/destroy.yml \
	roles/lab/tasks/main.yml roles/agent/tasks/main.yml roles/balancer/tasks/main.yml \
	plugins/connection/netns.py plugins/modules/member.py plugins/modules/cluster_info.py \
	plugins/filter/scale_plan.py plugins/filter/scale_plan.yml plugins/doc_fragments/api.py \
	agent/pyproject.toml agent/README.md agent/src/hafleet_agent/node/node.py \
	changelogs/changelog.yaml; do
	grep -qx "$need" "$work/contents" || { echo "release: $need is missing from the tarball" >&2; exit 1; }
done
if grep -E '(^|/)(\.venv|\.git|build|dist|\.ansible|__pycache__|\.pytest_cache|\.ruff_cache|\.hypothesis|tests/output|hack)(/|$)|^bench(/|$)|\.pyc$|\.egg-info|^(Makefile|constraints\.txt|ruff\.toml|pytest\.ini)$' \
	"$work/contents" >"$work/junk"; then
	echo "release: the tarball holds files it must not ship:" >&2
	head -20 "$work/junk" >&2
	exit 1
fi
echo "release: $(wc -l <"$work/contents") entries, $(du -h "$tarball" | cut -f1)"

# From here on: outside the source tree, with no ansible.cfg of the checkout (its
# collections_path holds a link to the checkout) and only the installed collection on the path.
mkdir -p "$work/collections" "$work/run"
cd "$work/run"
export ANSIBLE_COLLECTIONS_PATH="$work/collections"
export ANSIBLE_CONFIG="$work/run/ansible.cfg"
printf '[defaults]\ninterpreter_python = auto_silent\nforks = 16\n[connection]\npipelining = true\n' >"$ANSIBLE_CONFIG"

echo "release: installing into an empty collections path"
ansible-galaxy collection install --force --no-deps --offline -p "$work/collections" "$tarball" >/dev/null
installed="$work/collections/ansible_collections/hafleet/cluster"
[ -f "$installed/MANIFEST.json" ] || { echo "release: the collection did not install" >&2; exit 1; }
cat >"$work/run/vars.yml" <<VARS
hafleet_lab_root: $lab_root
hafleet_lab_bridge: hfmolr0
hafleet_lab_subnet: 10.83.5.0/24
hafleet_lab_prefix: hfmol-r
hafleet_lab_veth_prefix: hfmolrv
hafleet_cluster_name: hfmol-release
hafleet_balancer_listen: ["127.0.0.1:18385"]
VARS

echo "release: ansible-playbook hafleet.cluster.scale -e nodes=3 (installed copy, from $PWD)"
ansible-playbook hafleet.cluster.scale -e nodes=3 -e @vars.yml
echo "release: ansible-playbook hafleet.cluster.status"
ansible-playbook hafleet.cluster.status -e @vars.yml

# The agent came from the tarball: its virtualenv holds a wheel install, not the checkout.
agent_file=$("$lab_root/venv/bin/python" -c 'import hafleet_agent; print(hafleet_agent.__file__)')
case "$agent_file" in
"$lab_root"/venv/*) echo "release: the agent runs from $agent_file" ;;
*) echo "release: the agent was not installed from the tarball ($agent_file)" >&2; exit 1 ;;
esac

echo "release: ansible-playbook hafleet.cluster.destroy"
ansible-playbook hafleet.cluster.destroy -e @vars.yml
if ip netns list | grep -qE '^hfmol-r[0-9]+( |$)' || [ -e "$lab_root" ]; then
	echo "release: destroy left namespaces or $lab_root behind" >&2
	exit 1
fi
echo "release: OK - hafleet-cluster-$version.tar.gz builds, installs and scales a lab from itself"
