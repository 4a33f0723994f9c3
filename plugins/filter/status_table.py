# Copyright: hafleet contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""hafleet.cluster.status_table: the table of playbooks/status.yml, as a list of lines.

A list, not one string with newlines: ansible-core's default callback prints a string's
newlines as ``\\n`` on one line, and a list one line each, with any result format.
The documentation is in status_table.yml beside this file.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ansible.errors import AnsibleFilterError

HEADER = ("NODE", "ROLE", "HEALTH", "WEIGHT", "HAPROXY", "CPU", "MEM", "LOAD1", "SERVICE")
# Numbers are right-aligned; the last column is never padded (no trailing blanks).
RIGHT = frozenset(("WEIGHT", "CPU", "MEM", "LOAD1"))
GAP = "  "


def _mapping(value, what):
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise AnsibleFilterError(f"status_table: {what} must be a dict, got {type(value).__name__}")
    return value


def _list(value, what):
    if value is None:
        return []
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Sequence):
        raise AnsibleFilterError(f"status_table: {what} must be a list, got {type(value).__name__}")
    return list(value)


def _number(value, fmt):
    """``value`` formatted with ``fmt``, or ``-`` when it is missing or not a number."""
    if value is None or isinstance(value, bool):
        return "-"
    try:
        return fmt % float(value)
    except (TypeError, ValueError):
        return "-"


def _dash(value):
    return "-" if value is None or value == "" else str(value)


def _probed(status):
    """A member's own ``/v1/health`` as the controller got it: 200, 503, or no answer."""
    if isinstance(status, bool):
        return "DOWN"
    try:
        code = int(status)
    except (TypeError, ValueError):
        return "DOWN"
    if code == 200:
        return "ok"
    return "unhealthy" if code > 0 else "DOWN"  # (503: up, but no leader known, or lagging)


def _health(member, probes=None):
    """``probes`` (no leader known): {id: the status of the member's own /v1/health}; the
    replicated ``healthy`` is then the last word of a leader, which nothing can change."""
    if probes is None:
        alive = "ok" if member.get("healthy") else "DOWN"
    else:
        alive = _probed(probes.get(str(member.get("id"))))
    if member.get("draining"):
        return "draining" if alive == "ok" else f"draining,{alive}"
    if member.get("maintenance"):  # out of rotation on purpose; still a voter
        return "maintenance" if alive == "ok" else f"maintenance,{alive}"
    return alive


def _haproxy(server):
    if not server:
        return "-"
    text = "UP" if server.get("up") else "DOWN"
    if server.get("maint"):
        text += " maint"
    if server.get("drain"):
        text += " drain"
    return f"{text} w{_dash(server.get('weight'))} {_dash(server.get('sessions'))}cx"


def _cpu(metrics):
    percent = _number(metrics.get("cpu_percent"), "%.0f%%")
    count = metrics.get("cpu_count")
    if percent == "-" or count is None or isinstance(count, bool):
        return "-"
    try:
        return f"{percent}/{int(count)}c"
    except (TypeError, ValueError):
        return "-"


def _row(member, server, probes=None):
    metrics = _mapping(member.get("metrics"), f"the metrics of {member.get('id')}")
    return (
        _dash(member.get("id")),
        _dash(member.get("role")),
        _health(member, probes),
        _dash(member.get("weight")),
        _haproxy(server),
        _cpu(metrics),
        _number(metrics.get("mem_percent"), "%.0f%%"),
        _number(metrics.get("load1"), "%.2f"),
        _dash(member.get("service_addr")),
    )


def _columns(rows):
    widths = [max(len(row[i]) for row in rows) for i in range(len(HEADER))]
    lines = []
    for row in rows:
        cells = []
        for i, cell in enumerate(row):
            if i == len(row) - 1:
                cells.append(cell)
            elif HEADER[i] in RIGHT:
                cells.append(cell.rjust(widths[i]))
            else:
                cells.append(cell.ljust(widths[i]))
        lines.append(GAP.join(cells).rstrip())
    return lines


def status_table(
    cluster, servers=None, listen=None, strategy="roundrobin", provider="lab", health=None
):
    """The fleet as lines: the cluster, a header, a row a member (sorted by id), the voters,
    HAProxy. Prose lines stay short and free of ": " so that the yaml result format neither
    quotes nor folds them.

    ``cluster`` is what hafleet.cluster.cluster_info returns ({} when no agent answers);
    ``servers`` HAProxy's servers as the balancer role's ``servers`` tasks read them, or None
    when they were not read (HAProxy on another host). ``health``: {member id: the HTTP
    status of its own ``/v1/health`` as the controller got it, 0 or None for no answer}, used
    only while no leader is known (the members' ``healthy`` is a leader's record: without a
    leader nothing updates it); with no leader and no ``health``, HEALTH is that record and
    a line says so.
    """
    cluster = _mapping(cluster, "the cluster")
    if not cluster:
        return [
            f"no cluster answers (provider {provider})",
            "bring one up with ansible-playbook hafleet.cluster.scale -e nodes=N",
        ]
    members = [_mapping(m, "a member") for m in _list(cluster.get("members"), "members")]
    read = servers is not None
    servers = [_mapping(s, "a server") for s in _list(servers, "servers")]
    by_name = {str(s.get("name")): s for s in servers}
    node = _mapping(cluster.get("node"), "node")
    weights = _mapping(cluster.get("weights"), "weights")
    first = (
        f"cluster {_dash(cluster.get('cluster'))} ({_dash(cluster.get('cluster_id'))})"
        f"  leader {_dash(cluster.get('leader_id'))}  term {_dash(cluster.get('term'))}"
        f"  commit {_dash(node.get('commit_index'))}  weights v{_dash(weights.get('version'))}"
    )
    leaderless = cluster.get("leader_id") in (None, "")
    probes = None
    if leaderless and health is not None:
        probes = {str(k): v for k, v in _mapping(health, "health").items()}
    rows = [HEADER] + [
        _row(m, by_name.get(str(m.get("id"))), probes)
        for m in sorted(members, key=lambda m: str(m.get("id")))
    ]
    warning = []
    if leaderless:
        warning = [
            "no leader - quorum may be lost (or an election is under way), writes fail",
            "HEALTH is each member's own /v1/health, asked from the controller"
            if probes is not None
            else "HEALTH is the record the last leader wrote, it may be stale",
        ]
    where = ", ".join(str(a) for a in _list(listen, "listen")) or "-"
    if read:
        up = sum(1 for s in servers if s.get("up"))
        # (a draining server is up but takes no new connections: it was counted as serving)
        draining = sum(1 for s in servers if s.get("up") and s.get("drain"))
        serving = f"has {up} of {len(servers)} server(s) up" + (
            f", {draining} of them draining" if draining else ""
        )
    else:
        serving = "(its servers were not read)"
    votes = (
        f"{len(_list(cluster.get('voters'), 'voters'))} voter(s), "
        f"{len(_list(cluster.get('learners'), 'learners'))} learner(s)"
    )
    return [first, *warning, *_columns(rows), votes, f"HAProxy {where} ({strategy}) {serving}"]


class FilterModule:
    def filters(self):
        return {"status_table": status_table}
