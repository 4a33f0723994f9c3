"""Start ``hafleet-agent`` with an fsync that fails on demand (a chaos-test fault).

    python chaos_launcher.py --fsync-fail-file PATH -- run --node-id ... (the agent's argv)

The Raft storage takes an injectable ``fsync_fn`` (``DiskStorage.open(..., fsync_fn=)``);
this wrapper hands it one that calls ``os.fsync`` until ``PATH`` exists and raises
``OSError(EIO)`` from then on, as a failing disk would. Nothing else changes: the agent's
own ``main`` runs with the rest of the arguments, in this process (the PID is the agent's).
"""

from __future__ import annotations

import errno
import os
import sys


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[0] != "--fsync-fail-file" or argv[2] != "--":
        print("usage: chaos_launcher.py --fsync-fail-file PATH -- AGENT-ARGS...", file=sys.stderr)
        return 2
    trigger = argv[1]

    from hafleet_agent import cli
    from hafleet_agent import wal as storage

    def fsync(fd: int) -> None:
        if os.path.exists(trigger):
            raise OSError(errno.EIO, "injected fsync failure (chaos test)")
        os.fsync(fd)

    original = storage.DiskStorage.open.__func__  # type: ignore[attr-defined]

    def open_with_failing_fsync(cls, path, **kwargs):  # type: ignore[no-untyped-def]
        kwargs["fsync_fn"] = fsync
        return original(cls, path, **kwargs)

    storage.DiskStorage.open = classmethod(open_with_failing_fsync)  # type: ignore[method-assign]
    return cli.main(argv[3:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
