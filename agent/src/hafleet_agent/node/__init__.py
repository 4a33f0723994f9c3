"""The node: what runs one cluster member (the Raft driver, the peer table, founding and
joining, the leader's chores, the membership verbs). ``verbs.py`` is the face the HTTP API
sees; ``errors.py`` the errors it answers with. See docs/architecture.md."""
