# Copyright: hafleet contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""hafleet.cluster.node_files on real files: make, then nothing to change, check mode, diff
(secrets never shown), modes, reads before writes, bad input (refused before any change)."""

from __future__ import annotations

import os
import stat
from unittest import mock

import pytest
from ansible.module_utils import basic

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


# Bad input: refused with the option, the item and the path, before anything is made or
# changed, and in check mode as in a real run.

_NO_USER = "hafleet-no-such-user"
_NO_GROUP = "hafleet-no-such-group"


def _refused(tmp_path, args, check_mode=False):
    before = sorted(p.name for p in tmp_path.iterdir())
    result = run_module(node_files.main, args, check_mode=check_mode)
    assert result["failed"] is True, result
    assert not result.get("changed")
    assert "nothing was changed" in result["msg"]
    assert ".hafleet-" not in result["msg"]
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    return result["msg"]


def test_read_of_a_directory_fails_naming_it(tmp_path):
    (tmp_path / "adir").mkdir()
    args = {"directories": [{"path": str(tmp_path / "etc")}], "read": [str(tmp_path / "adir")]}
    for check_mode in (False, True):
        msg = _refused(tmp_path, args, check_mode)
        assert msg.startswith(f"read[0]: {tmp_path / 'adir'} is a directory")


def test_read_of_an_unreadable_file_fails_naming_it(tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("x\n")
    real_open = open

    def deny(path, *args, **kwargs):
        if str(path) == str(secret):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    args = {"directories": [{"path": str(tmp_path / "etc")}], "read": [str(secret)]}
    with mock.patch("builtins.open", deny):
        msg = _refused(tmp_path, args)
    assert msg.startswith(f"read[0]: cannot read {secret}: Permission denied")


def test_read_under_a_file_is_missing(tmp_path):
    (tmp_path / "afile").write_text("x")
    result = run_module(node_files.main, {"read": [str(tmp_path / "afile" / "x")]})
    assert result["contents"] == {str(tmp_path / "afile" / "x"): None}


def _warned(args):
    """A check-mode run that goes on with warnings: (result, warnings)."""
    warnings = []
    with mock.patch.object(basic.AnsibleModule, "warn", lambda self, text: warnings.append(text)):
        result = run_module(node_files.main, args, check_mode=True)
    assert not result.get("failed"), result
    return result, warnings


def test_file_in_a_missing_directory_is_refused_and_a_warning_in_check_mode(tmp_path):
    # In check mode an earlier task of the play (which made the directory) made nothing.
    dest = tmp_path / "nodir" / "f"
    args = {
        "directories": [{"path": str(tmp_path / "etc")}],
        "files": [
            {"dest": str(tmp_path / "etc" / "ok"), "content": "x"},
            {"dest": str(dest), "content": "x"},
        ],
    }
    msg = _refused(tmp_path, args)
    assert msg.startswith(f"files[1].dest: {dest} cannot be written")
    assert f"its directory {tmp_path / 'nodir'} does not exist" in msg
    result, warnings = _warned(args)
    assert result["changed"] is True
    assert len(warnings) == 1 and warnings[0].startswith(f"files[1].dest: {dest} cannot be")
    assert "a real run fails unless an earlier task makes it" in warnings[0]
    assert not (tmp_path / "etc").exists()


def test_file_under_a_file_is_refused(tmp_path):
    (tmp_path / "afile").write_text("x")
    msg = _refused(tmp_path, {"files": [{"dest": str(tmp_path / "afile" / "f"), "content": "x"}]})
    assert f"{tmp_path / 'afile'} is not a directory" in msg


def test_file_in_a_directory_the_task_makes_is_written(tmp_path):
    # A listed directory, or a parent that makedirs makes for one.
    args = {
        "directories": [{"path": str(tmp_path / "a" / "b" / "c") + "/"}],
        "files": [
            {"dest": str(tmp_path / "a" / "b" / "c" / "f"), "content": "1"},
            {"dest": str(tmp_path / "a" / "b" / "g"), "content": "2"},
        ],
    }
    assert run_module(node_files.main, args, check_mode=True)["changed"] is True
    assert not (tmp_path / "a").exists()
    assert run_module(node_files.main, args)["changed"] is True
    assert (tmp_path / "a" / "b" / "g").read_text() == "2"


def test_file_where_the_task_makes_a_directory_is_refused(tmp_path):
    args = {
        "directories": [{"path": str(tmp_path / "d" / "e")}],
        "files": [{"dest": str(tmp_path / "d"), "content": "x"}],
    }
    assert f"files[0].dest: {tmp_path / 'd'} is a directory" in _refused(tmp_path, args)


def test_directory_behind_a_file_is_refused_before_any_change(tmp_path):
    (tmp_path / "afile").write_text("x")
    args = {
        "directories": [{"path": str(tmp_path / "first")}, {"path": str(tmp_path / "afile" / "d")}]
    }
    for check_mode in (False, True):
        msg = _refused(tmp_path, args, check_mode)
        assert msg.startswith(f"directories[1].path: {tmp_path / 'afile' / 'd'} cannot be made")


@pytest.mark.parametrize("option", ["directories", "files"])
@pytest.mark.parametrize(
    "mode", ["0789", "8", "banana", 99999999999999999999, 0o10000, -1, "-1", "017777", 1.5, True]
)
def test_bad_mode_is_refused_before_any_change(tmp_path, option, mode):
    path = str(tmp_path / "new")
    args = {
        "directories": [{"path": str(tmp_path / "first"), "mode": "0750"}],
        "files": [{"dest": str(tmp_path / "first" / "f"), "content": "x"}],
    }
    if option == "directories":
        args["directories"].append({"path": path, "mode": mode})
        where = "directories[1].mode"
    else:
        args["files"].append({"dest": path, "content": "x", "mode": mode})
        where = "files[1].mode"
    for check_mode in (False, True):
        msg = _refused(tmp_path, args, check_mode)
        assert msg.startswith(f"{where} for {path}: {mode!r} is ")


@pytest.mark.parametrize(
    "owner, group, wanted",
    [
        (_NO_USER, None, f"owner for {{path}}: user '{_NO_USER}' does not exist"),
        (None, _NO_GROUP, f"group for {{path}}: group '{_NO_GROUP}' does not exist"),
        ("4294967296", None, "owner for {path}: user number 4294967296 is out of range"),
        (None, "-1", "group for {path}: group number -1 is out of range"),
    ],
)
def test_unknown_owner_or_group_is_refused_before_any_change(tmp_path, owner, group, wanted):
    directory, dest = tmp_path / "d", tmp_path / "f"
    attrs = {k: v for k, v in (("owner", owner), ("group", group)) if v is not None}
    for args, where, path in (
        ({"directories": [{"path": str(directory), **attrs}]}, "directories[0]", directory),
        ({"files": [{"dest": str(dest), "content": "x", **attrs}]}, "files[0]", dest),
    ):
        msg = _refused(tmp_path, args)
        assert msg.startswith(f"{where}.{wanted.format(path=path)}")
        if "does not exist" in wanted:  # check mode: a user or group an earlier task makes
            result, warnings = _warned(args)
            assert result["changed"] is True
            assert len(warnings) == 1, warnings
            assert warnings[0].startswith(f"{where}.{wanted.format(path=path)}")
        else:
            _refused(tmp_path, args, check_mode=True)
    # An existing directory is not touched either.
    directory.mkdir(mode=0o700)
    args = {"directories": [{"path": str(directory), "mode": "0755", **attrs}]}
    _refused(tmp_path, args)
    assert _mode(directory) == 0o700


def test_every_problem_is_named_at_once(tmp_path):
    args = {
        "directories": [{"path": str(tmp_path / "d"), "mode": "banana", "owner": _NO_USER}],
        "files": [{"dest": str(tmp_path / "x" / "f"), "content": "x", "mode": "0789"}],
        "read": [str(tmp_path)],
    }
    msg = _refused(tmp_path, args)
    for where in ("read[0]:", "directories[0].mode", "directories[0].owner", "files[0].mode"):
        assert where in msg
    assert "files[0].dest" in msg


def test_good_modes_and_owners_are_taken(tmp_path):
    args = {
        "directories": [
            {"path": str(tmp_path / "a"), "mode": "u=rwx,g=rx,o=", "owner": "0", "group": "0"},
            {"path": str(tmp_path / "b"), "mode": 0o2750},
        ],
        "files": [
            {"dest": str(tmp_path / "a" / "f"), "content": "x", "mode": 0o640},
            {"dest": str(tmp_path / "a" / "g"), "content": "x", "mode": "0o600"},
            {"dest": str(tmp_path / "a" / "h"), "content": "x", "mode": "u=rw,g=r"},
        ],
    }
    assert run_module(node_files.main, args)["changed"] is True
    assert _mode(tmp_path / "a") == 0o750
    assert _mode(tmp_path / "b") == 0o2750
    assert _mode(tmp_path / "a" / "f") == 0o640
    assert _mode(tmp_path / "a" / "g") == 0o600
    assert _mode(tmp_path / "a" / "h") == 0o640
    assert run_module(node_files.main, args)["changed"] is False


def test_write_error_names_the_file_not_the_temporary_one(tmp_path):
    dest = tmp_path / "f"

    def no_space(fd):
        raise OSError(28, "No space left on device")

    with mock.patch.object(node_files.os, "fsync", no_space):
        result = run_module(node_files.main, {"files": [{"dest": str(dest), "content": "x"}]})
    assert result["failed"] is True
    assert result["msg"] == f"files[0].dest: cannot write {dest}: No space left on device"
    assert list(tmp_path.iterdir()) == []
