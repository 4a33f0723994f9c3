"""Allow ``python -m hafleet_agent``."""

from hafleet_agent.cli import main

raise SystemExit(main())
