# Run by the agent role (read_supervisor.yml) with the agent's own Python:
#   python -c "$(cat node_state.py)" \
#       '{"NODE": {"pidfile": P, "demo_pidfile": D, "stamp": S, "digest": G}, ...}'
# prints {"NODE": {"agent": {"state": "running"|"stopped"}, "demo": {...}, "stamp": HEX,
# "digest": HEX}, ...}: the supervised processes' state as `hafleet-supervise status` tells it
# (the PID in the pid file, running with the recorded start time), what the running agent was
# started with (the stamp) and the installed agent's digest, for one node or (all of them on
# this host's file systems: the lab) for every node of the play, in one Python start.
import json
import sys

from hafleet_agent.supervise import read_pidfile


def hex_of(path):
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return "".join(c for c in handle.read() if c in "0123456789abcdef")
    except OSError:
        return ""


def state_of(pidfile):
    return {"state": "running" if read_pidfile(pidfile) is not None else "stopped"}


print(
    json.dumps(
        {
            node: {
                "agent": state_of(paths["pidfile"]),
                "demo": state_of(paths["demo_pidfile"]),
                "stamp": hex_of(paths["stamp"]),
                "digest": hex_of(paths["digest"]),
            }
            for node, paths in json.loads(sys.argv[1]).items()
        }
    )
)
