"""The live cluster page (``GET /ui/``, server/ui.py) in headless Chromium (issue 20).

A real group of three ``hafleet-agent run`` processes on a loopback /24 of its own
(harness.py); Debian's ``chromium`` driven over the DevTools Protocol (browser.py). The page
loads over HTTPS (the agents run with TLS; Chromium accepts their certificates' keys only)
without a token and with strict headers; a wrong token brings the token form back with
the agent's reason; the right one shows the three members and the leader; after
``POST /v1/leadership/transfer`` the page follows the new leader on its own. No CSP report, no
script error on the way. Every wait polls the page with a deadline.

``HAFLEET_UI_SCREENSHOT=docs/ui.png`` saves the page of the real group as a PNG (the picture in
docs/monitoring.md is made so).
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
from browser import Browser, Page
from harness import API_PORT, Cluster

#: What the page shows, as JSON: the token form or the view, the summary, the member rows.
SHOWN = """(() => {
  if (!document.getElementById("member-rows")) return "null";  // not (yet) the page
  return JSON.stringify({
  login: !document.getElementById("login").hidden,
  loginError: document.getElementById("login-error").textContent,
  conn: document.getElementById("conn").dataset.state,
  node: document.getElementById("node-id").textContent,
  leader: document.getElementById("leader").textContent,
  term: document.getElementById("term").textContent,
  health: document.getElementById("health").textContent,
  rows: [...document.querySelectorAll("#member-rows tr")].map((tr) => ({
    id: tr.dataset.member, role: tr.dataset.role,
    cells: [...tr.children].map((td) => td.textContent),
    elements: tr.querySelectorAll("*").length,
  })),
  stored: sessionStorage.getItem("hafleet.ui.token") !== null,
  balancers: document.getElementById("balancers").hidden ? [] :
    [...document.querySelectorAll("#balancer-rows tr")].map((tr) => ({
      id: tr.dataset.balancer, cells: [...tr.children].map((td) => td.textContent),
      elements: tr.querySelectorAll("*").length,
    })),
  injected: document.querySelectorAll("img, b, iframe, script:not([src])").length,
});
})()"""

FOLLOW_TIMEOUT = 15.0
REGISTERED = "balancer/registered/"  # keys.REGISTERED_PREFIX: a syncer's registration
HOSTILE_ID = '<img src="x" onerror="document.title=1">'
HOSTILE_HOST = "<b>host</b><script>document.title=2</script>"


NOT_YET = {"login": False, "loginError": "", "conn": "", "leader": "", "rows": [], "balancers": []}


def shown(value: str) -> dict[str, Any]:
    """What SHOWN saw (NOT_YET while the page has not loaded)."""
    return json.loads(value) or NOT_YET


def fetch(cluster: Cluster, host: str, method: str, path: str) -> tuple[int, dict[str, str], bytes]:
    """One HTTPS request without a token, the agent's certificate checked against the CA."""
    conn = http.client.HTTPSConnection(host, API_PORT, timeout=10, context=cluster.ssl_context)
    try:
        conn.request(method, path)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def check_http(cluster: Cluster, host: str) -> None:
    """/ui/ and its files without a token, with the strict headers; /ui redirects."""
    status, headers, body = fetch(cluster, host, "GET", "/ui/")
    assert status == 200, (status, body[:200])
    assert headers["content-type"].startswith("text/html"), headers
    csp = headers["content-security-policy"]
    for rule in ("default-src 'self'", "script-src 'self'", "frame-ancestors 'none'"):
        assert rule in csp, csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp, csp
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["referrer-policy"] == "no-referrer"
    assert b'<script src="app.js"' in body and b"<script>" not in body
    files = [("/ui/app.js", "text/javascript"), ("/ui/app.css", "text/css")]
    for path, ctype in files + [("/ui/favicon.svg", "image/svg+xml")]:
        status, headers, body = fetch(cluster, host, "GET", path)
        assert status == 200 and headers["content-type"].startswith(ctype), (path, headers)
        assert headers["x-content-type-options"] == "nosniff" and body
    status, headers, body = fetch(cluster, host, "HEAD", "/ui/")
    assert status == 200 and body == b""
    status, headers, _ = fetch(cluster, host, "GET", "/ui")
    assert status in (301, 302, 307, 308) and headers["location"] == "/ui/"
    # only the page's own files go without a token
    assert fetch(cluster, host, "GET", "/ui/x.js")[0] == 401
    assert fetch(cluster, host, "GET", "/v1/members")[0] == 401


async def give_token(page: Page, token: str) -> None:
    await page.evaluate(
        f"""(() => {{
          document.getElementById("token").value = {json.dumps(token)};
          document.getElementById("token-form").requestSubmit();
          return true;
        }})()"""
    )


async def drive(
    browser: Browser, cluster: Cluster, served_by: str, screenshot: Path | None
) -> dict[str, float]:
    """The browser part; returns how long the page took to follow the leader change."""
    # Without a screenshot to take, the page's idle refresh is 120 s (?wait=120s): only the
    # /v1/watch poll ending on the new leader's first entry can make it follow in time.
    wait = "5s" if screenshot is not None else "120s"
    url = f"https://{cluster.node(served_by).host}:{API_PORT}/ui/?wait={wait}"
    ids = sorted(cluster.nodes)
    async with aiohttp.ClientSession() as session:
        page = await browser.page(session)
        try:
            await page.navigate(url)
            await page.poll(SHOWN, lambda v: shown(v)["login"], 15, "the token form")

            await give_token(page, "not-the-token-" + "x" * 40)
            seen = await page.poll(
                SHOWN,
                lambda v: shown(v)["login"] and "wrong API token" in shown(v)["loginError"],
                15,
                "the form back with the agent's reason after a wrong token",
            )
            assert not shown(seen)["stored"], "a refused token must not stay in the tab"
            page.errors.clear()  # the browser logs the 401 itself

            # a token fetch() cannot put in a header (a pasted typographic quote): the form
            # says so at once, rather than a page that retries for ever with it stored
            await give_token(page, "\u2019" + "x" * 40)
            seen = await page.poll(
                SHOWN,
                lambda v: shown(v)["login"] and "HTTP header" in shown(v)["loginError"],
                15,
                "the form back saying the token cannot go in a header",
            )
            assert not shown(seen)["stored"], "a token that cannot be sent must not stay"

            await give_token(page, cluster.token)
            lead = cluster.leader()

            def members_and_leader(v: str, leader: str | None) -> bool:
                """The 3 members, ``leader`` (None: whichever the page names) leading."""
                s = shown(v)
                roles = {r["id"]: r["role"] for r in s["rows"]}
                leader = leader or s["leader"]
                return (
                    not s["login"]
                    and s["conn"] == "live"
                    and sorted(roles) == ids
                    and s["leader"] == leader
                    and roles.get(leader) == "leader"
                    and all(role == "voter" for m, role in roles.items() if m != leader)
                )

            seen = shown(
                await page.poll(
                    SHOWN,
                    lambda v: members_and_leader(v, None),
                    15,
                    f"the 3 members {ids} and a leader ({lead} when the group formed)",
                )
            )
            # the page's own leader from here on: a busy machine may have held an election
            lead = seen["leader"]
            assert seen["node"] == served_by and seen["stored"]
            assert int(seen["term"]) >= 1
            for row in seen["rows"]:  # text in cells, nothing parsed as markup
                assert row["elements"] == len(row["cells"]), row

            if screenshot is not None:  # once every member's metrics are in
                await page.poll(
                    SHOWN,
                    lambda v: all(r["cells"][4] != "-" for r in shown(v)["rows"]),
                    20,
                    "every member's metrics",
                )
                await page.screenshot(screenshot)

            to = next(m for m in ids if m != lead)
            sent = time.monotonic()
            answer = cluster.ok(lead, "POST", "/v1/leadership/transfer", {"to": to})
            assert answer["leader_id"] == to, answer
            await page.poll(
                SHOWN,
                lambda v: members_and_leader(v, to),
                FOLLOW_TIMEOUT,
                f"the page to follow the new leader {to}",
            )
            followed = time.monotonic() - sent

            # data is text: a balancer registration (KV) whose id and host are markup
            value = {"host": HOSTILE_HOST, "backend": "web", "strategy": "weighted"}
            value |= {"at": time.time(), "ttl_s": 60, "vip": "10.0.0.9", "vip_held": True}
            path = "/v1/kv/" + quote(REGISTERED + HOSTILE_ID, safe="/")
            cluster.ok(to, "PUT", path, {"value": value})
            seen = shown(
                await page.poll(
                    SHOWN,
                    lambda v: any(b["id"] == HOSTILE_ID for b in shown(v)["balancers"]),
                    FOLLOW_TIMEOUT,
                    "the page to show the registered balancer",
                )
            )
            row = next(b for b in seen["balancers"] if b["id"] == HOSTILE_ID)
            assert row["cells"][:2] == [HOSTILE_ID, HOSTILE_HOST], row
            assert row["elements"] == len(row["cells"]) and seen["injected"] == 0, seen
            assert page.errors == [], page.errors  # no CSP report, no script error
            return {"followed_s": followed}
        finally:
            await page.close()


def test_cluster_page_shows_the_group_and_follows_a_leader_change(tmp_path: Path) -> None:
    started = time.monotonic()
    cluster = Cluster(tmp_path, tls=True)  # the API on HTTPS, as the collection runs it
    browser: Browser | None = None
    try:
        cluster.add_many(3, bootstrap_expect=3)
        assert cluster.tls_dir is not None
        # Chromium accepts the agents' certificates (by their keys), nothing else
        certs = [cluster.tls_dir / f"{nid}.crt" for nid in sorted(cluster.nodes)]
        browser = Browser(tmp_path / "chromium", trust=certs).start()
        statuses = cluster.wait_agreed()
        lead = next(nid for nid, st in statuses.items() if st["state"] == "leader")
        check_http(cluster, cluster.node(lead).host)
        shot = os.environ.get("HAFLEET_UI_SCREENSHOT")
        # the page is served by the leader, which then becomes a follower
        took = asyncio.run(drive(browser, cluster, lead, Path(shot) if shot else None))
    except BaseException:
        print(f"agent logs:\n{cluster.logs_tail()}")
        if browser is not None:
            print(f"chromium log:\n{browser.log()}")
        raise
    finally:
        if browser is not None:
            browser.close()
        cluster.close()
    total = time.monotonic() - started
    print(f"followed the new leader in {took['followed_s']:.2f} s; test took {total:.1f} s")
