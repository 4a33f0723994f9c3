"""``hafleet-agent run`` imports only what running an agent needs (issue 17: idle RSS).

The other subcommands' modules, the API client and what only they use (http.client,
urllib.request, email's parser) cost a running agent ~1.3 MiB of RSS; ``run`` parses its
flags with a parser of ``run`` alone, which must answer exactly as the whole one does.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from hafleet_agent.cli import build_parser

NOT_FOR_RUN = (
    "hafleet_agent.cli_ops",
    "hafleet_agent.cli_snapshot",
    "hafleet_agent.cli_balancer",
    "hafleet_agent.apiclient",
    "hafleet_agent.client",
    "hafleet_agent.client_config",
    "http.client",
    "urllib.request",
    "email.parser",
)

# A fresh interpreter runs ``main(["run", ...])`` with the agent itself replaced by a stub
# that prints which of the modules named on its command line are loaded at that point.
PROBE = """
import sys, types
import hafleet_agent.config as config, hafleet_agent.run as run
config.load = lambda path, flags: types.SimpleNamespace(log_format="text")
run.setup_logging = lambda fmt: None
async def agent(cfg):
    print(",".join(m for m in sys.argv[2:] if m in sys.modules))
    return 0
run.run_agent = agent
from hafleet_agent.cli import build_parser, main
if sys.argv[1] == "full":
    build_parser()
raise SystemExit(main(["run", "--node-id", "n1"]))
"""


def _loaded(mode: str) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, mode, *NOT_FOR_RUN],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return [m for m in out.stdout.strip().split(",") if m]


def test_run_does_not_import_the_other_subcommands_modules() -> None:
    assert _loaded("run") == []
    # The probe sees them when the whole parser was built (it can fail).
    assert "hafleet_agent.cli_ops" in _loaded("full")


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "--help"],
        ["run", "--bogus"],
        ["run", "status"],
        ["run", "--raft-port", "99999"],
        ["run", "--log-format", "xml"],
        ["run", "--join"],
    ],
)
def test_the_run_parser_answers_as_the_whole_one(argv: list[str], capsys) -> None:
    answers = []
    for parser in (build_parser(), build_parser(only_run=True)):
        with pytest.raises(SystemExit) as exc:
            parser.parse_args(argv)
        answers.append((exc.value.code, capsys.readouterr()))
    assert answers[0] == answers[1]
    assert answers[0][1].out or answers[0][1].err


def test_the_run_parser_parses_as_the_whole_one() -> None:
    argv = ["run", "--node-id", "n1", "--join", "a:1,b:2", "--no-mdns", "--raft-port", "7400"]
    whole, alone = build_parser().parse_args(argv), build_parser(only_run=True).parse_args(argv)
    assert vars(whole) == vars(alone)
