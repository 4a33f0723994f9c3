"""The node: what runs one cluster member. ``node.py`` (``Node``) composes the parts: the
Raft driver (``driver.py``), frames in and out (``inbox.py``, ``outbox.py``), the peer table
and mDNS (``peers.py``, ``mdns.py``), founding and joining (``bootstrap.py``), the leader's
chores (``chores.py``), reports to the leader (``reports.py``), chunked snapshots
(``snapshots.py``), the cluster id on disk (``meta.py``), background tasks and the fail-stop
(``tasks.py``). ``verbs.py`` is the face the HTTP API sees; ``errors.py`` the errors it
answers with. Nothing here imports the HTTP server: ``run.py`` starts it. See
docs/architecture.md."""
