"""Moved to :mod:`hafleet_agent.server` (issue 14); this re-export goes once nothing imports
it."""

from .server import build_app, start_api

__all__ = ["build_app", "start_api"]
