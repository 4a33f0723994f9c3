"""The lab fixture of the collection's integration tests (helpers in labtest.py)."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import pytest
from labtest import REPO, TestLab, free_port, list_links, list_namespaces


@pytest.fixture(scope="module")
def lab():
    clash = [n for n in list_namespaces() if n.startswith("hfct-node")]
    clash += [n for n in list_links() if n == "hfct0" or n.startswith("hfct-v")]
    if clash:
        pytest.fail(
            f"a lab of these tests is still there ({', '.join(sorted(clash))}); remove it "
            "with: python tests/support/netlab.py --cleanup hfct"
        )
    cache = REPO / "build" / "collection-tests"
    cache.mkdir(parents=True, exist_ok=True)
    # Short: HAProxy's admin socket path must fit in 108 bytes.
    root = Path(tempfile.mkdtemp(prefix="hfct-", dir="/tmp"))
    root.rmdir()  # the playbook makes it
    the_lab = TestLab(root=root, cache=cache, port=free_port())
    try:
        yield the_lab
    finally:
        problems = the_lab.cleanup()
        if problems:
            print("collection lab cleanup: " + "; ".join(problems), file=sys.stderr)
