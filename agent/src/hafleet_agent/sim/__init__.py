"""Deterministic simulation of a hafleet cluster and checkers for the histories it records."""
