#!/usr/bin/python
# Copyright: hafleet contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: node_files
short_description: A node's directories and small files, in one task
description:
  - Makes directories and writes small files (a configuration, secrets, certificates) with
    their owner, group and mode, all in one round trip to the host; optionally reads some
    small files first and returns them.
  - The role P(hafleet.cluster.agent#role) puts a node's files in place with it, one task
    instead of one a file, which is most of a converge's time on a fleet of many nodes.
  - A file is written only when its content differs (to a temporary file of the same
    directory with the wanted mode, then renamed over the old one); owner, group and mode are
    then set when they differ, as M(ansible.builtin.file) does.
  - Every item is checked before anything is read, made or changed; a mode that is not
    valid, an owner or group that does not exist on the host, a directory that cannot be made
    (a file is in its way) or a file whose directory neither exists nor is made by this task
    fails the task with the option, the item and the path, and changes nothing.
  - In check mode a missing owner, group or directory is a warning instead (an earlier task
    of the play, which check mode skipped, may make it); the other checks fail as in a real
    run.
author: hafleet maintainers (@hafleet)
version_added: 0.1.0
extends_documentation_fragment:
  - hafleet.cluster.attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
    details:
      - The content of the files given with O(files[].content), before and after; the owner,
        group and mode of every directory and file that changes. The content of
        O(files[].secret_content) is never shown.
  idempotent:
    support: full
options:
  directories:
    description: Directories to make (with their parents), in order.
    type: list
    elements: dict
    default: []
    suboptions:
      path:
        description: The directory.
        type: path
        required: true
      owner:
        description:
          - Its owner, a user name that exists on the host or a number; unset leaves it as it
            is.
        type: str
      group:
        description:
          - Its group, a group name that exists on the host or a number; unset leaves it as it
            is.
        type: str
      mode:
        description:
          - Its mode, as for M(ansible.builtin.file); octal digits in quotes, such as V('0750')
            (at most V('07777')), a number from V(0) to V(4095) (what YAML makes of an
            unquoted V(0750)), or a symbolic mode such as V('u=rwx,g=rx,o=').
        type: raw
  files:
    description:
      - Files to write, in order, after the directories. Give exactly one of O(files[].content)
        and O(files[].secret_content).
    type: list
    elements: dict
    default: []
    suboptions:
      dest:
        description:
          - The file; its directory must exist or be made by this task (one of
            O(directories) or a parent of one).
          - It must not be a directory, nor anything else that is not a regular file.
        type: path
        required: true
      content:
        description: The file's content (shown in the diff).
        type: str
      secret_content:
        description: The file's content, never shown or logged (a key, a token).
        type: str
      owner:
        description:
          - Its owner, a user name that exists on the host or a number; unset leaves it as it
            is.
        type: str
      group:
        description:
          - Its group, a group name that exists on the host or a number; unset leaves it as it
            is.
        type: str
      mode:
        description:
          - Its mode, as for M(ansible.builtin.file); octal digits in quotes, such as V('0600')
            (at most V('07777')), a number from V(0) to V(4095) (what YAML makes of an
            unquoted V(0600)), or a symbolic mode such as V('u=rw,g=r,o=').
        type: raw
  read:
    description:
      - Small text files to read before anything changes; returned in RV(contents).
      - A path that is a directory, or something else that is not a regular file, or that
        cannot be read fails the task before anything changes.
    type: list
    elements: path
    default: []
  exists:
    description:
      - Paths to look for before anything changes (a program, a file left by an older
        version); whether each exists is returned in RV(exists).
    type: list
    elements: path
    default: []
seealso:
  - module: ansible.builtin.copy
  - module: ansible.builtin.file
"""

EXAMPLES = r"""
- name: Put a node's configuration and secrets in place
  hafleet.cluster.node_files:
    directories:
      - {path: /etc/hafleet-agent, owner: root, group: hafleet-agent, mode: "0750"}
    files:
      - dest: /etc/hafleet-agent/agent.toml
        content: "{{ lookup('ansible.builtin.template', 'agent.toml.j2') }}"
        mode: "0640"
      - dest: /etc/hafleet-agent/token
        secret_content: "{{ lookup('ansible.builtin.file', 'secrets/token', rstrip=false) }}"
        owner: hafleet-agent
        mode: "0600"
    read:
      - /run/hafleet-agent/agent.stamp
    exists:
      - /usr/sbin/haproxy
  register: node_files
"""

RETURN = r"""
changed_paths:
  description: The directories and files that were (in check mode, would be) made or changed.
  returned: always
  type: list
  elements: str
  sample: [/etc/hafleet-agent/agent.toml]
contents:
  description: Each path of O(read) and its text before any change, or null when it is missing.
  returned: always
  type: dict
  sample: {/run/hafleet-agent/agent.stamp: "3f2a...\n"}
exists:
  description: Each path of O(exists) and whether it existed before any change.
  returned: always
  type: dict
  sample: {/usr/sbin/haproxy: true}
"""

import grp
import os
import pwd
import stat
import tempfile

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.common.text.converters import to_bytes, to_text

_ATTRS = dict(
    owner=dict(type="str"),
    group=dict(type="str"),
    mode=dict(type="raw"),
)

# The highest user or group number chown takes (2**32 - 1 means "leave it as it is").
_MAX_ID = 2**32 - 2

# A stand-in for a path's stat when a symbolic mode is only checked, not applied.
_STAT_FOR_CHECKS = os.stat_result((stat.S_IFDIR | 0o755, 0, 0, 0, 0, 0, 0, 0, 0, 0))


class _Refused(Exception):
    """An item the module refuses; its text names the option, the item and the path."""


def _file_args(path, spec):
    return {
        "path": path,
        "owner": spec.get("owner"),
        "group": spec.get("group"),
        "mode": spec.get("mode"),
        "secontext": None,
        "attributes": None,
    }


def _octal(mode):
    """The mode as a number when it is given as one or as octal digits (else None: symbolic).

    Only for a mode that _mode_problem() took.
    """
    if mode is None or isinstance(mode, int):
        return mode
    try:
        return int(mode, 8)
    except ValueError:
        return None


def _mode_problem(mode):
    """Why a mode is not one the module takes, or None: octal (a number or digits, at most
    07777) or symbolic, as ansible.builtin.file takes them."""
    if mode is None:
        return None
    if isinstance(mode, bool) or not isinstance(mode, (int, str)):
        return f"{mode!r} is neither a string nor a number"
    if isinstance(mode, str):
        try:
            value = int(mode, 8)
        except ValueError:
            try:
                AnsibleModule._symbolic_mode_to_octal(_STAT_FOR_CHECKS, mode)
            except Exception:
                return (
                    f"{mode!r} is neither octal (digits 0-7, at most '07777') nor symbolic"
                    " (such as 'u=rwx,g=rx,o=')"
                )
            return None
    else:
        value = mode
    if not 0 <= value <= 0o7777:
        return f"{mode!r} is out of range (0 to '07777' in octal, 4095 as a number)"
    return None


def _id_problem(name, lookup, kind):
    """Why an owner or group is not one chown can take, or None."""
    if name is None:
        return None
    try:
        number = int(name)
    except ValueError:
        try:
            lookup(name)
        except (KeyError, ValueError):
            return f"{kind} {name!r} does not exist on the host"
        return None
    if not 0 <= number <= _MAX_ID:
        return f"{kind} number {name} is out of range (0 to {_MAX_ID})"
    return None


def _attr_problems(where, path, spec, soft):
    """The problems of a mode, owner and group; an owner or group that does not exist goes
    to ``soft`` instead (see _checked)."""
    problems = []
    for option, problem in (
        ("mode", _mode_problem(spec.get("mode"))),
        ("owner", _id_problem(spec.get("owner"), pwd.getpwnam, "user")),
        ("group", _id_problem(spec.get("group"), grp.getgrnam, "group")),
    ):
        if problem:
            text = f"{where}.{option} for {path}: {problem}"
            (soft if problem.endswith("does not exist on the host") else problems).append(text)
    return problems


def _checked(params, check_mode=False):
    """Every problem of the directories and files to make, before any change: (problems,
    warnings). What an earlier task of the same play makes - a user, a group, a directory -
    is not there in check mode, which made nothing: there a missing one is a warning, in a
    real run a problem."""
    problems, soft = [], []
    made = set()  # the directories that exist or are made by this task (with their parents)
    for index, spec in enumerate(params["directories"]):
        where, path = f"directories[{index}]", spec["path"]
        problems.extend(_attr_problems(where, path, spec, soft))
        wanted = os.path.abspath(path)
        if os.path.lexists(wanted) and not os.path.isdir(wanted):
            problems.append(f"{where}.path: {path} exists and is not a directory")
            continue
        chain = [wanted]
        while not os.path.lexists(chain[-1]):
            chain.append(os.path.dirname(chain[-1]))
        if not os.path.isdir(chain[-1]):
            problems.append(f"{where}.path: {path} cannot be made, {chain[-1]} is not a directory")
            continue
        made.update(chain)
    for index, spec in enumerate(params["files"]):
        where, dest = f"files[{index}]", spec["dest"]
        problems.extend(_attr_problems(where, dest, spec, soft))
        wanted = os.path.abspath(dest)
        if wanted in made or os.path.isdir(wanted):
            problems.append(f"{where}.dest: {dest} is a directory")
            continue
        if os.path.exists(wanted) and not os.path.isfile(wanted):
            problems.append(f"{where}.dest: {dest} is not a regular file")
            continue
        parent = os.path.dirname(wanted)
        if parent in made or os.path.isdir(parent):
            continue
        if os.path.lexists(parent):
            problems.append(f"{where}.dest: {dest} cannot be written, {parent} is not a directory")
        else:
            soft.append(
                f"{where}.dest: {dest} cannot be written, its directory {parent} does not exist"
                " (make it first or list it in directories)"
            )
    if check_mode:
        return problems, soft
    return problems + soft, []


def _read(path, where):
    """The bytes of a regular file, or None when it is missing."""
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        raise _Refused(f"{where}: cannot read {path}: {exc.strerror or exc}") from None
    if stat.S_ISDIR(st.st_mode):
        raise _Refused(f"{where}: {path} is a directory, not a file")
    if not stat.S_ISREG(st.st_mode):
        raise _Refused(f"{where}: {path} is not a regular file")
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise _Refused(f"{where}: cannot read {path}: {exc.strerror or exc}") from None


def make_directory(module, where, spec, changed_paths, diffs):
    path = spec["path"]
    diff = {"before_header": path, "after_header": path, "before": {}, "after": {}}
    if not os.path.isdir(path):
        if os.path.lexists(path):
            raise _Refused(f"{where}.path: {path} exists and is not a directory")
        diff["before"]["state"], diff["after"]["state"] = "absent", "directory"
        changed_paths.append(path)
        diffs.append(diff)
        if module.check_mode:
            return
        try:
            os.makedirs(path, mode=_octal(spec.get("mode")) or 0o755, exist_ok=True)
        except OSError as exc:
            raise _Refused(f"{where}.path: cannot make {path}: {exc.strerror or exc}") from None
        module.set_fs_attributes_if_different(_file_args(path, spec), True)
        return
    if module.set_fs_attributes_if_different(_file_args(path, spec), False, diff):
        changed_paths.append(path)
        diffs.append(diff)


def write_file(module, where, spec, changed_paths, diffs):
    dest = spec["dest"]
    secret = spec.get("secret_content") is not None
    text = spec["secret_content"] if secret else spec["content"]
    wanted = to_bytes(text, errors="surrogate_or_strict")
    if os.path.isdir(dest):
        raise _Refused(f"{where}.dest: {dest} is a directory")
    have = _read(dest, f"{where}.dest")
    diff = {"before_header": dest, "after_header": dest, "before": {}, "after": {}}
    content_changed = have != wanted
    if content_changed:
        if secret:
            diff["before"]["content"] = "(secret)" if have is not None else "(absent)"
            diff["after"]["content"] = "(secret, changed)"
        else:
            diff["before"] = "" if have is None else to_text(have, errors="surrogate_or_strict")
            diff["after"] = text
    if content_changed and not module.check_mode:
        directory = os.path.dirname(dest) or "."
        tmp = None
        try:
            fd, tmp = tempfile.mkstemp(prefix=".hafleet-", dir=directory)
            with os.fdopen(fd, "wb") as f:
                os.fchmod(f.fileno(), _octal(spec.get("mode")) or 0o600)
                f.write(wanted)
                f.flush()
                os.fsync(f.fileno())
            module.set_fs_attributes_if_different(_file_args(tmp, spec), False)
            os.replace(tmp, dest)
        except BaseException as exc:
            if tmp is not None and os.path.lexists(tmp):
                os.unlink(tmp)
            if isinstance(exc, OSError):
                # (exc's own text would name the temporary file)
                raise _Refused(
                    f"{where}.dest: cannot write {dest}: {exc.strerror or type(exc).__name__}"
                ) from None
            raise
    attrs_changed = False
    if have is not None:
        # The attributes of a file that was there (a new one got them before the rename).
        attr_diff = {"before": {}, "after": {}}
        attrs_changed = module.set_fs_attributes_if_different(
            _file_args(dest, spec), False, attr_diff
        )
        if attrs_changed and not content_changed:
            diff["before"], diff["after"] = attr_diff["before"], attr_diff["after"]
    if content_changed or attrs_changed:
        changed_paths.append(dest)
        diffs.append(diff)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            directories=dict(
                type="list",
                elements="dict",
                default=[],
                options=dict(path=dict(type="path", required=True), **_ATTRS),
            ),
            files=dict(
                type="list",
                elements="dict",
                default=[],
                options=dict(
                    dest=dict(type="path", required=True),
                    content=dict(type="str"),
                    secret_content=dict(type="str", no_log=True),
                    **_ATTRS,
                ),
                mutually_exclusive=[("content", "secret_content")],
                required_one_of=[("content", "secret_content")],
            ),
            read=dict(type="list", elements="path", default=[]),
            exists=dict(type="list", elements="path", default=[]),
        ),
        supports_check_mode=True,
    )
    problems, contents = [], {}
    for index, path in enumerate(module.params["read"]):
        try:
            data = _read(path, f"read[{index}]")
        except _Refused as exc:
            problems.append(str(exc))
            continue
        contents[path] = None if data is None else to_text(data, errors="surrogate_or_replace")
    refused, warnings = _checked(module.params, module.check_mode)
    problems.extend(refused)
    if problems:
        module.fail_json(msg="; ".join(problems) + " (nothing was changed)")
    for text in warnings:
        module.warn(f"{text} - a real run fails unless an earlier task makes it")
    exists = {path: os.path.exists(path) for path in module.params["exists"]}
    changed_paths, diffs = [], []
    try:
        for index, spec in enumerate(module.params["directories"]):
            make_directory(module, f"directories[{index}]", spec, changed_paths, diffs)
        for index, spec in enumerate(module.params["files"]):
            write_file(module, f"files[{index}]", spec, changed_paths, diffs)
    except _Refused as exc:
        module.fail_json(msg=str(exc), changed=bool(changed_paths), changed_paths=changed_paths)
    result = {
        "changed": bool(changed_paths),
        "changed_paths": changed_paths,
        "contents": contents,
        "exists": exists,
    }
    if module._diff:
        result["diff"] = diffs
    module.exit_json(**result)


if __name__ == "__main__":
    main()
