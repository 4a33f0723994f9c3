"""hafleet-agent: one per host; discovery, Raft group, capacity weights for HAProxy."""

# Keep in step with `version` in agent/pyproject.toml and galaxy.yml.
__version__ = "0.1.0"

__all__ = ["__version__"]
