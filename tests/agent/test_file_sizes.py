"""No product file over 600 lines (issue 14's acceptance): a module that grows past it is a
sign it holds more than one job — split it by job, as docs/architecture.md describes."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LIMIT = 600


def test_no_product_file_is_over_600_lines() -> None:
    files = [*(ROOT / "agent" / "src").rglob("*.py"), *(ROOT / "plugins").rglob("*.py")]
    assert len(files) > 50
    over = {
        str(f.relative_to(ROOT)): n
        for f in files
        if (n := len(f.read_text(encoding="utf-8").splitlines())) > LIMIT
    }
    assert not over, f"over {LIMIT} lines: {over}"
