# Copyright: hafleet contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""module_utils/api.py's HafleetModule, the base of the modules that talk to an agent: the
connection options merged into the module's own, one client, API errors mapped once."""

from __future__ import annotations

from ansible_collections.hafleet.cluster.plugins.module_utils.api import (
    DEFAULT_API_URL,
    HafleetAPIError,
    HafleetModule,
    api_argument_spec,
)
from ansible_collections.hafleet.cluster.tests.unit.plugins.modules.utils import run_module

TOKEN = "t" * 40


def module_main(work, **options):
    """A module's main(): one option of its own, ``name``, and ``work(base)``."""

    def main():
        base = HafleetModule(
            argument_spec=dict(name=dict(type="str", default="x")),
            supports_check_mode=True,
            **options,
        )
        base.run(lambda: work(base))

    return main


def test_the_module_takes_its_own_options_and_the_api_options():
    seen = {}

    def work(base):
        seen.update(base.params)
        return {"changed": False, "url": base.client.base_url, "token": base.client.token}

    result = run_module(module_main(work), {"name": "n", "api_token": TOKEN})

    assert result["failed"] is False
    assert set(seen) == {"name"} | set(api_argument_spec())
    assert seen["name"] == "n"
    assert result["url"] == DEFAULT_API_URL
    assert result["token"] == TOKEN


def test_the_token_and_the_token_file_exclude_each_other_with_the_modules_own_rule(tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    main = module_main(lambda base: {}, mutually_exclusive=[("name", "api_url")])

    both_tokens = run_module(main, {"api_token": TOKEN, "api_token_file": str(token_file)})
    own_rule = run_module(main, {"name": "n", "api_url": "http://127.0.0.1:1"})

    assert both_tokens["failed"] is True
    assert "api_token" in both_tokens["msg"] and "api_token_file" in both_tokens["msg"]
    assert own_rule["failed"] is True
    assert "name" in own_rule["msg"] and "api_url" in own_rule["msg"]


def test_an_api_error_that_escapes_the_work_fails_once_with_its_status():
    def work(base):
        raise HafleetAPIError("no leader", status=503, method="POST", url="http://a/v1/members")

    result = run_module(module_main(work), {"api_token": TOKEN})

    assert result["failed"] is True
    assert result["status"] == 503
    assert result["msg"] == "POST http://a/v1/members: HTTP 503: no leader"


def test_a_bad_url_fails_with_its_message():
    result = run_module(module_main(lambda base: base.client), {"api_url": "10.0.0.1:7480"})

    assert result["failed"] is True
    assert "http://" in result["msg"]


def test_fail_names_what_was_being_done_before_the_api_error():
    def work(base):
        base.fail("cannot list", HafleetAPIError("refused", status=401, method="GET"), extra=1)

    result = run_module(module_main(work), {"api_token": TOKEN})

    assert result == {
        "failed": True,
        "msg": "cannot list: GET: HTTP 401: refused",
        "status": 401,
        "extra": 1,
    }


def test_a_token_file_that_cannot_be_read_fails_the_module(tmp_path):
    result = run_module(
        module_main(lambda base: base.client), {"api_token_file": str(tmp_path / "none")}
    )

    assert result["failed"] is True
    assert result["msg"].startswith("cannot read the API token file"), result["msg"]
