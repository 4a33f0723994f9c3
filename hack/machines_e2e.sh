#!/usr/bin/env bash
# make machines-e2e: the real-host path end to end, from the released tarball (root).
#
# 1. a snapshot of the checkout's HEAD; ansible-galaxy collection build of it, install the tarball with --no-deps into an empty
#    temporary collections path; every playbook below runs from THAT copy by FQCN
#    (hafleet.cluster.scale / destroy), from a directory outside the checkout, with an
#    ansible.cfg and a HOME of its own (no checkout ansible.cfg).
# 2. hack/machines.py up: 5 pool machines and 2 balancer machines of the lab hfe2e
#    (hfe2e-m1..5, hfe2e-lb1..2; bridge hfe2e1, 10.79.30.0/24; files under the work directory).
# 3. scale 0->5 with balancer_vip=10.79.30.250 (keepalived on both balancer machines; timed);
#    5->5 again, whose recap must say changed=0 everywhere; exactly one machine holds the VIP.
# 4. loadgen.py through the virtual address:8080 while the fleet scales 5->3 and 3->5: every
#    request must succeed; each leaving node was reported drained by BOTH balancers' syncers
#    (not by the drain timeout) and no agent removed a node without every drained mark.
# 5. reboot one pool machine (systemctl reboot over SSH): bounded wait for a new boot id, then
#    for the node to be a voter again with a leader.
# 6. a rolling upgrade to the next version (a copy of the source with the version bumped,
#    built and installed over the first) by the scale playbook under load: every request
#    succeeds, every node reports the new version and is a voter again.
# 7. hafleet.cluster.destroy: no hafleet unit, user or file is left on the pool machines.
# 8. hack/machines.py down. A summary of timings and request counts is printed at the end.
# Any failed check exits non-zero; everything made is removed on exit (trap), also on failure.
set -euo pipefail
src=$(cd "$(dirname "$0")/.." && pwd)
export PATH="$src/.venv/bin:$PATH"
work=$(mktemp -d /tmp/hafleet-machines-e2e.XXXXXX)
out="$work/machines"
lab_args=(--prefix hfe2e- --bridge hfe2e1 --subnet 10.79.30.0/24 --out "$out")
pool_size=5
small=3
cluster=hfe2e
victim=hfe2e-m2
summary=()

note() { echo "machines-e2e: $*"; }
fail() {
	echo "machines-e2e: FAILED: $*" >&2
	exit 1
}
record() { summary+=("$1"); }

cleanup() {
	local rc=$?
	trap - EXIT
	note "cleaning up"
	if [ -f "$out/hosts.yml" ] && [ -d "$work/collections/ansible_collections/hafleet/cluster" ] && [ -z "${destroyed:-}" ]; then
		(cd "$work/run" && ansible-playbook -i "$out/hosts.yml" hafleet.cluster.destroy \
			-e @"$work/run/vars.yml" -e nodes="$pool_size" >"$work/destroy-on-exit.log" 2>&1) || true
	fi
	if [ -n "${load_pid:-}" ]; then kill "$load_pid" 2>/dev/null || true; fi
	python3 "$src/hack/machines.py" down "${lab_args[@]}" >"$work/down-on-exit.log" 2>&1 || {
		echo "machines-e2e: hack/machines.py down failed:" >&2
		tail -20 "$work/down-on-exit.log" >&2
		[ "$rc" -ne 0 ] || rc=1
	}
	rm -rf "$work"
	if [ "${#summary[@]}" -gt 0 ]; then
		echo "machines-e2e: summary"
		printf '  %s\n' "${summary[@]}"
	fi
	[ "$rc" -eq 0 ] && echo "machines-e2e: OK" || echo "machines-e2e: FAILED (exit $rc)" >&2
	exit "$rc"
}
trap cleanup EXIT

secs() { python3 -c 'import sys, time; print(f"{time.monotonic() - float(sys.argv[1]):.1f}")' "$1"; }
now() { python3 -c 'import time; print(time.monotonic())'; }

# The recap's changed= and failed= of a playbook's log, checked.
check_recap() { # log, max changed ("any" or a number)
	python3 - "$1" "$2" <<'PY'
import re, sys
text = open(sys.argv[1]).read().split("PLAY RECAP", 1)
if len(text) < 2:
    sys.exit("no PLAY RECAP in the log")
rows = re.findall(r"^(\S+)\s*:\s*ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", text[1], re.M)
if not rows:
    sys.exit("no hosts in the recap")
bad = [r for r in rows if int(r[3]) or int(r[4])]
if bad:
    sys.exit(f"unreachable or failed hosts: {bad}")
changed = sum(int(r[2]) for r in rows)
if sys.argv[2] != "any" and changed > int(sys.argv[2]):
    sys.exit(f"changed={changed} in the recap: {[(r[0], r[2]) for r in rows if int(r[2])]}")
print(changed)
PY
}

play() { # name, log, then ansible-playbook arguments
	local name=$1 log=$2
	shift 2
	note "ansible-playbook $name $*"
	if ! (cd "$work/run" && ansible-playbook -i "$out/hosts.yml" "$name" -e @vars.yml "$@" >"$log" 2>&1); then
		tail -40 "$log" >&2
		fail "ansible-playbook $name $* (log above)"
	fi
}

# The cluster as one node's API sees it: prints "<state> <leader> <voters,...>" or fails.
api_view() { # address
	python3 - "$1" "$HOME/.hafleet/$cluster/token" "$HOME/.hafleet/$cluster/ca.crt" <<'PY'
import json, ssl, sys, urllib.request
addr, token = sys.argv[1], open(sys.argv[2]).read().strip()
# The agents serve HTTPS (the collection's default): verified against the cluster CA, by IP.
ctx = ssl.create_default_context(cafile=sys.argv[3])
def get(path):
    req = urllib.request.Request(f"https://{addr}:7480{path}", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=3, context=ctx) as answer:
        return json.load(answer)
status = get("/v1/status")
members = get("/v1/members")
# The leader's row says "leader" (it votes too).
voters = sorted(m["id"] for m in members if m.get("role") in ("voter", "leader"))
print(status["state"], status.get("leader_id"), ",".join(voters))
PY
}

# Requests through the balancer until one batch reaches the expected nodes (bounded).
wait_balanced() { # expected node count
	local tries
	for tries in $(seq 1 60); do
		if python3 - "http://$lb_addr:8080/" "$1" <<'PY'; then return 0; fi
import json, sys, urllib.request
seen = set()
try:
    for _ in range(40):
        with urllib.request.urlopen(sys.argv[1], timeout=3) as answer:
            seen.add(json.load(answer)["node"])
except OSError:
    sys.exit(1)
sys.exit(0 if len(seen) == int(sys.argv[2]) else 1)
PY
		sleep 1
	done
	fail "the balancer did not reach $1 nodes within $tries tries"
}

ssh_to() { # host address, command...
	local addr=$1
	shift
	ssh -i "$out/id_ed25519" -o BatchMode=yes -o ConnectTimeout=3 -o StrictHostKeyChecking=yes \
		-o UserKnownHostsFile="$out/known_hosts" "deploy@$addr" "$@"
}

addr_of() { # host name
	python3 - "$out/hosts.yml" "$1" <<'PY'
import sys, yaml
inv = yaml.safe_load(open(sys.argv[1]))
def walk(group):
    for name, host in (group.get("hosts") or {}).items():
        yield name, host
    for child in (group.get("children") or {}).values():
        yield from walk(child or {})
print(dict(walk(inv["hafleet_machines"]))[sys.argv[2]]["ansible_host"])
PY
}

# loadgen.py through the balancer machine's address:8080 until stop_load (bounded: 900 s).
start_load() { # name
	load_name=$1
	rm -f "$work/load.stop" "$work/load.ready"
	python3 "$src/tests/agent/collection/loadgen.py" --url "http://$lb_addr:8080/" --rate 50 \
		--duration 900 --stop-file "$work/load.stop" --concurrency 32 --timeout 5 \
		--out "$work/load-$load_name.json" --ready-file "$work/load.ready" >"$work/load-$load_name.log" 2>&1 &
	load_pid=$!
	for _ in $(seq 1 100); do
		[ -e "$work/load.ready" ] && break
		kill -0 "$load_pid" 2>/dev/null || fail "loadgen ended before its first answer"
		sleep 0.1
	done
	[ -e "$work/load.ready" ] || fail "loadgen had no answer within 10 s"
}

# Stops the load; sets load_line to its summary; fails unless every request succeeded.
stop_load() {
	touch "$work/load.stop"
	wait "$load_pid" || true
	load_pid=
	[ -f "$work/load-$load_name.json" ] || fail "loadgen wrote no summary"
	load_line=$(python3 - "$work/load-$load_name.json" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
print(f"sent={s.get('sent')} ok={s.get('ok')} failed={s.get('failed')} nodes={len(s['by_node'])} "
      f"failures={s.get('failures') or {}} p99={s['latency_ms']['p99']} ms")
sys.exit(0 if s.get("failed") == 0 and s.get("ok", 0) > 0 and s.get("sent") == s.get("ok") else 1)
PY
	) || fail "requests failed under load ($load_name): $load_line"
}

t_all=$(now)
# One snapshot of the source: the checkout's HEAD commit (a tree outside git: its files).
# Both versions below are built from it, so work going on in the checkout meanwhile does not
# leak into the "upgrade"; commit what you want tested.
mkdir -p "$work/src"
if git -C "$src" rev-parse --verify -q HEAD >/dev/null 2>&1; then
	note "snapshot of HEAD ($(git -C "$src" rev-parse --short HEAD)) in $work/src"
	git -C "$src" archive --format=tar HEAD | tar -C "$work/src" -xf -
else
	note "snapshot of $src in $work/src"
	tar -C "$src" --exclude=./.venv --exclude='*/.venv' --exclude=./build --exclude=./dist \
		--exclude='*/__pycache__' --exclude=./.ansible --exclude='*/.ansible' -cf - . | tar -C "$work/src" -xf -
fi
note "building the tarball into $src/dist"
mkdir -p "$src/dist"
# "Created collection for hafleet.cluster at /…/dist/hafleet-cluster-<version>.tar.gz"
tarball=$(cd "$work/src" && ansible-galaxy collection build --force --output-path "$src/dist" | sed -n 's/^Created collection .* at //p')
[ -f "$tarball" ] || fail "ansible-galaxy collection build made no tarball"
note "built $tarball"

mkdir -p "$work/collections" "$work/run" "$work/home"
export HOME="$work/home"
export ANSIBLE_COLLECTIONS_PATH="$work/collections"
export ANSIBLE_CONFIG="$work/run/ansible.cfg"
printf '[defaults]\ninterpreter_python = auto_silent\nforks = 16\n[connection]\npipelining = true\n' >"$ANSIBLE_CONFIG"
note "installing the tarball into an empty collections path"
ansible-galaxy collection install --force --no-deps --offline -p "$work/collections" "$tarball" >/dev/null
[ -f "$work/collections/ansible_collections/hafleet/cluster/MANIFEST.json" ] || fail "the collection did not install"
vip=10.79.30.250
printf 'provider: inventory\nhafleet_cluster_name: %s\nbalancer_vip: %s\n' "$cluster" "$vip" >"$work/run/vars.yml"

note "hack/machines.py up: $pool_size pool machines, 2 balancer machines"
t=$(now)
python3 "$src/hack/machines.py" up --nodes "$pool_size" --balancers 2 "${lab_args[@]}" >"$work/up.log" 2>&1 ||
	{ tail -30 "$work/up.log" >&2; fail "hack/machines.py up"; }
record "machines up (5 pool + 2 balancers): $(secs "$t") s"
# The load goes to the virtual address (keepalived holds it on one balancer machine).
lb_addr=$vip
lb_addrs=("$(addr_of hfe2e-lb1)" "$(addr_of hfe2e-lb2)")
victim_addr=$(addr_of "$victim")
pool_addrs=()
for i in $(seq 1 "$pool_size"); do pool_addrs+=("$(addr_of "hfe2e-m$i")"); done

t=$(now)
play hafleet.cluster.scale "$work/scale-0-5.log" -e nodes=$pool_size
changed=$(check_recap "$work/scale-0-5.log" any) || fail "scale 0->5 recap"
record "scale 0->5: $(secs "$t") s (changed=$changed)"
view=$(api_view "${pool_addrs[0]}") || fail "the API after scale 0->5"
[ "$(echo "$view" | cut -d' ' -f3)" = "hfe2e-m1,hfe2e-m2,hfe2e-m3,hfe2e-m4,hfe2e-m5" ] || fail "voters after 0->5: $view"

t=$(now)
play hafleet.cluster.scale "$work/scale-5-5.log" -e nodes=$pool_size
check_recap "$work/scale-5-5.log" 0 >/dev/null || fail "scale 5->5 is not idempotent"
record "scale 5->5: $(secs "$t") s (changed=0)"
holders=$(for n in hfe2e-lb1 hfe2e-lb2; do ip -n "$n" -o -4 addr show | grep -qF " $vip/" && echo "$n"; done; true)
[ "$(echo "$holders" | grep -c .)" = 1 ] || fail "the virtual address $vip is held by: ${holders:-none}"
record "virtual address $vip held by $holders alone"

wait_balanced "$pool_size"
note "load through http://$lb_addr:8080/ while scaling 5->3->5"
start_load scale
t=$(now)
play hafleet.cluster.scale "$work/scale-5-3.log" -e nodes=$small
check_recap "$work/scale-5-3.log" any >/dev/null || fail "scale 5->3 recap"
record "scale 5->3 under load: $(secs "$t") s"
view=$(api_view "${pool_addrs[0]}") || fail "the API after scale 5->3"
[ "$(echo "$view" | cut -d' ' -f3)" = "hfe2e-m1,hfe2e-m2,hfe2e-m3" ] || fail "voters after 5->3: $view"
t=$(now)
play hafleet.cluster.scale "$work/scale-3-5.log" -e nodes=$pool_size
check_recap "$work/scale-3-5.log" any >/dev/null || fail "scale 3->5 recap"
record "scale 3->5 under load: $(secs "$t") s"
wait_balanced "$pool_size"
stop_load
record "load through $lb_addr:8080 across 5->3->5: $load_line"
# Scale-in with two balancers: each leaving node drained by both HAProxies before its removal.
for a in "${lb_addrs[@]}"; do
	log=$(ssh_to "$a" sudo journalctl -u hafleet-balancer --no-pager -o cat) || fail "the syncer's log on $a"
	for n in hfe2e-m4 hfe2e-m5; do
		echo "$log" | grep -qx ".*reported $n drained" || fail "the syncer on $a did not report $n drained (or only by its timeout)"
	done
done
for a in "${pool_addrs[@]:0:$small}"; do
	if ssh_to "$a" sudo journalctl -u hafleet-agent --no-pager -o cat | grep -F "without the drained mark"; then
		fail "an agent on $a removed a node without every balancer's drained mark"
	fi
done
record "scale-in 5->3: hfe2e-m4, hfe2e-m5 reported drained by both balancers' syncers before removal"

note "rebooting $victim"
boot_before=$(ssh_to "$victim_addr" cat /proc/sys/kernel/random/boot_id)
t=$(now)
ssh_to "$victim_addr" sudo systemctl reboot || true
boot_after=$boot_before
for _ in $(seq 1 120); do
	boot_after=$(ssh_to "$victim_addr" cat /proc/sys/kernel/random/boot_id 2>/dev/null) || boot_after=$boot_before
	[ "$boot_after" != "$boot_before" ] && break
	sleep 1
done
[ "$boot_after" != "$boot_before" ] || fail "$victim did not come back from its reboot within 120 tries"
t_ssh=$(secs "$t")
view=
for _ in $(seq 1 120); do
	view=$(api_view "$victim_addr" 2>/dev/null) || view=
	case "$view" in
	leader\ hfe2e-m*\ hfe2e-m1,hfe2e-m2,hfe2e-m3,hfe2e-m4,hfe2e-m5 | follower\ hfe2e-m*\ hfe2e-m1,hfe2e-m2,hfe2e-m3,hfe2e-m4,hfe2e-m5) break ;;
	esac
	view=
	sleep 1
done
[ -n "$view" ] || fail "$victim is not a voter with a leader within 120 tries after its reboot"
record "reboot of $victim: ssh back after $t_ssh s, a voter again after $(secs "$t") s ($view)"

# A rolling upgrade: the next version of the collection (version bumped in a copy of the
# source, built and installed over the first into the same collections path), applied by the
# same scale playbook under load. The agent role sees a new source digest, installs the new
# wheel on each host and restarts one agent at a time (each a healthy voter served by HAProxy
# before the next); every request through the balancer must succeed.
version=$(sed -n 's/^version: *//p' "$work/src/galaxy.yml")
next_version=$(python3 -c 'import sys; a, b, c = sys.argv[1].split("-")[0].split(".")[:3]; print(f"{a}.{b}.{int(c) + 1}")' "$version")
note "making version $next_version of the collection (from $version)"
mkdir -p "$work/next-dist"
cp -a "$work/src" "$work/next"
sed -i "s/^version: .*/version: $next_version/" "$work/next/galaxy.yml"
sed -i "s/^version = \".*\"/version = \"$next_version\"/" "$work/next/agent/pyproject.toml"
sed -i "s/^__version__ = \".*\"/__version__ = \"$next_version\"/" "$work/next/agent/src/hafleet_agent/__init__.py"
next_tarball=$(cd "$work/next" && ansible-galaxy collection build --force --output-path "$work/next-dist" | sed -n 's/^Created collection .* at //p')
[ -f "$next_tarball" ] || fail "ansible-galaxy collection build made no tarball of $next_version"
ansible-galaxy collection install --force --no-deps --offline -p "$work/collections" "$next_tarball" >/dev/null
installed=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["collection_info"]["version"])' \
	"$work/collections/ansible_collections/hafleet/cluster/MANIFEST.json")
[ "$installed" = "$next_version" ] || fail "installed $installed, not $next_version"
wait_balanced "$pool_size"
note "rolling upgrade to $next_version under load through http://$lb_addr:8080/"
start_load upgrade
t=$(now)
play hafleet.cluster.scale "$work/upgrade.log" -e nodes=$pool_size
changed=$(check_recap "$work/upgrade.log" any) || fail "upgrade recap"
t_upgrade=$(secs "$t")
wait_balanced "$pool_size"
stop_load
versions=$(python3 - "$HOME/.hafleet/$cluster/token" "$HOME/.hafleet/$cluster/ca.crt" "${pool_addrs[@]}" <<'PY'
import json, ssl, sys, urllib.request
token = open(sys.argv[1]).read().strip()
ctx = ssl.create_default_context(cafile=sys.argv[2])
out = []
for addr in sys.argv[3:]:
    req = urllib.request.Request(f"https://{addr}:7480/v1/status", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=3, context=ctx) as answer:
        status = json.load(answer)
    out.append(f"{status['node_id']}={status.get('version')}/{status['state']}")
print(" ".join(out))
PY
) || fail "the API after the upgrade"
for v in $versions; do
	case "$v" in
	*="$next_version"/leader | *="$next_version"/follower) ;;
	*) fail "after the upgrade: $versions (want every node at $next_version, a voter)" ;;
	esac
done
view=$(api_view "${pool_addrs[0]}") || fail "the API after the upgrade"
[ "$(echo "$view" | cut -d' ' -f3)" = "hfe2e-m1,hfe2e-m2,hfe2e-m3,hfe2e-m4,hfe2e-m5" ] || fail "voters after the upgrade: $view"
restarts=$(grep -c 'TASK \[hafleet.cluster.agent : Restart the agent (systemd' "$work/upgrade.log" || true)
record "rolling upgrade $version -> $next_version: $t_upgrade s (changed=$changed, $restarts agent restarts one at a time), every node at $next_version"
record "load through $lb_addr:8080 during the upgrade: $load_line"

t=$(now)
play hafleet.cluster.destroy "$work/destroy.log" -e nodes=$pool_size
check_recap "$work/destroy.log" any >/dev/null || fail "destroy recap"
destroyed=1
left=""
for i in $(seq 1 "$pool_size"); do
	addr=${pool_addrs[$((i - 1))]}
	# shellcheck disable=SC2016 # expanded on the machine
	found=$(ssh_to "$addr" 'for f in /etc/systemd/system/hafleet-agent.service /etc/systemd/system/hafleet-agent-demo.service /etc/hafleet-agent /var/lib/hafleet-agent /var/log/hafleet-agent /run/hafleet-agent /opt/hafleet-agent; do [ ! -e "$f" ] || echo "$f"; done
		systemctl list-units --all --no-legend "hafleet*" | sed "s/^/unit /"
		getent passwd hafleet-agent | sed "s/^/user /"; true') || fail "ssh to hfe2e-m$i after destroy"
	[ -z "$found" ] || left+="hfe2e-m$i: $(echo "$found" | tr '\n' ' ')"$'\n'
done
[ -z "$left" ] || fail "destroy left behind:"$'\n'"$left"
record "destroy: $(secs "$t") s, no hafleet unit, user or file left on the pool machines"

t=$(now)
python3 "$src/hack/machines.py" down "${lab_args[@]}" >"$work/down.log" 2>&1 ||
	{ tail -30 "$work/down.log" >&2; fail "hack/machines.py down"; }
record "machines down: $(secs "$t") s"
record "total: $(secs "$t_all") s"
