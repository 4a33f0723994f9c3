#!/usr/bin/env bash
# Run molecule scenarios in parallel lanes: `hack/molecule_lanes.sh BIN "scale lab" "agent balancer"`
# runs scale then lab in one lane while agent then balancer run in another. Every scenario has
# its own bridge, subnet, namespaces, ports and directory (extensions/molecule/*/vars), so lanes
# never meet. Each line is prefixed with its scenario; a lane stops at its first failed
# scenario; the script waits for every lane and exits 1 if any scenario failed.
set -u -o pipefail
bin=$1
shift
if [ $# -eq 0 ]; then
	echo "usage: $0 BIN LANE [LANE...] (a lane: scenario names separated by spaces)" >&2
	exit 2
fi

run_lane() {
	local s start
	for s in $1; do
		start=$(date +%s)
		echo "==> molecule test -s $s"
		if ! "$bin/molecule" test -s "$s" 2>&1 | sed -u "s/^/[$s] /"; then
			echo "==> molecule scenario $s FAILED after $(($(date +%s) - start))s"
			return 1
		fi
		echo "==> molecule scenario $s passed in $(($(date +%s) - start))s"
	done
}

pids=()
for lane in "$@"; do
	run_lane "$lane" &
	pids+=($!)
done
rc=0
for pid in "${pids[@]}"; do
	wait "$pid" || rc=1
done
exit $rc
