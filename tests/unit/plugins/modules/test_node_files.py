# Copyright: hafleet contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""hafleet.cluster.node_files on real files: make, then nothing to change, check mode, diff
(secrets never shown), modes, reads before writes, bad input."""

from __future__ import annotations

import os
import stat

from ansible_collections.hafleet.cluster.plugins.modules import node_files
from ansible_collections.hafleet.cluster.tests.unit.plugins.modules.utils import run_module


def _args(tmp_path):
    etc = tmp_path / "etc"
    return {
        "directories": [{"path": str(etc), "mode": "0750"}, {"path": str(tmp_path / "run")}],
        "files": [
            {"dest": str(etc / "agent.toml"), "content": 'node_id = "n1"\n', "mode": "0640"},
            {"dest": str(etc / "token"), "secret_content": "s3cr3t-token\n", "mode": "0600"},
        ],
        "read": [str(tmp_path / "run" / "agent.stamp")],
    }


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_makes_everything_then_changes_nothing(tmp_path):
    args = _args(tmp_path)
    first = run_module(node_files.main, args)
    assert first["changed"] is True
    assert first["changed_paths"] == [
        str(tmp_path / "etc"),
        str(tmp_path / "run"),
        str(tmp_path / "etc" / "agent.toml"),
        str(tmp_path / "etc" / "token"),
    ]
    assert first["contents"] == {str(tmp_path / "run" / "agent.stamp"): None}
    assert (tmp_path / "etc" / "token").read_text() == "s3cr3t-token\n"
    assert _mode(tmp_path / "etc") == 0o750
    assert _mode(tmp_path / "etc" / "agent.toml") == 0o640
    assert _mode(tmp_path / "etc" / "token") == 0o600
    (tmp_path / "run" / "agent.stamp").write_text("abc\n")
    second = run_module(node_files.main, args)
    assert second["changed"] is False
    assert second["changed_paths"] == []
    assert second["contents"] == {str(tmp_path / "run" / "agent.stamp"): "abc\n"}
    assert not [p for p in (tmp_path / "etc").iterdir() if p.name.startswith(".hafleet-")]


def test_check_mode_changes_nothing_and_diff_hides_secrets(tmp_path):
    args = _args(tmp_path)
    run_module(node_files.main, args)
    args["files"][0]["content"] = 'node_id = "n2"\n'
    args["files"][1]["secret_content"] = "another-token\n"
    args["files"][1]["mode"] = "0640"
    checked = run_module(node_files.main, args, check_mode=True, diff=True)
    assert checked["changed"] is True
    assert checked["changed_paths"] == [
        str(tmp_path / "etc" / "agent.toml"),
        str(tmp_path / "etc" / "token"),
    ]
    assert (tmp_path / "etc" / "agent.toml").read_text() == 'node_id = "n1"\n'
    assert (tmp_path / "etc" / "token").read_text() == "s3cr3t-token\n"
    assert _mode(tmp_path / "etc" / "token") == 0o600
    config_diff, token_diff = checked["diff"]
    assert config_diff["before"] == 'node_id = "n1"\n'
    assert config_diff["after"] == 'node_id = "n2"\n'
    assert "token" not in repr(token_diff["before"]) + repr(token_diff["after"])
    done = run_module(node_files.main, args, diff=True)
    assert done["changed"] is True
    assert (tmp_path / "etc" / "token").read_text() == "another-token\n"
    assert _mode(tmp_path / "etc" / "token") == 0o640


def test_mode_drift_alone_is_repaired(tmp_path):
    args = _args(tmp_path)
    run_module(node_files.main, args)
    os.chmod(tmp_path / "etc" / "token", 0o644)
    again = run_module(node_files.main, args, diff=True)
    assert again["changed_paths"] == [str(tmp_path / "etc" / "token")]
    assert again["diff"][0]["before"] == {"mode": "0644"}
    assert _mode(tmp_path / "etc" / "token") == 0o600


def test_check_mode_on_nothing_makes_nothing(tmp_path):
    checked = run_module(node_files.main, _args(tmp_path), check_mode=True)
    assert checked["changed"] is True
    assert not (tmp_path / "etc").exists()


def test_needs_exactly_one_content(tmp_path):
    args = _args(tmp_path)
    args["files"][0]["secret_content"] = "x"
    assert run_module(node_files.main, args)["failed"] is True
    args = _args(tmp_path)
    del args["files"][0]["content"]
    assert run_module(node_files.main, args)["failed"] is True
    assert not (tmp_path / "etc").exists()


def test_refuses_a_file_where_a_directory_goes(tmp_path):
    (tmp_path / "etc").write_text("not a directory")
    result = run_module(node_files.main, _args(tmp_path))
    assert result["failed"] is True
    assert "not a directory" in result["msg"]


def test_exists_is_looked_at_before_any_change(tmp_path):
    args = _args(tmp_path)
    token = str(tmp_path / "etc" / "token")
    program = tmp_path / "haproxy"
    program.write_text("#!/bin/sh\n")
    args["exists"] = [str(program), token, str(tmp_path / "nowhere")]
    first = run_module(node_files.main, args)
    assert first["exists"] == {str(program): True, token: False, str(tmp_path / "nowhere"): False}
    assert os.path.exists(token)
    again = run_module(node_files.main, args, check_mode=True)
    assert again["exists"][token] is True
    assert again["changed"] is False
