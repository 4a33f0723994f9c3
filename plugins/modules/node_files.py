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
        description: Its owner (a name or a number); unset leaves it as it is.
        type: str
      group:
        description: Its group (a name or a number); unset leaves it as it is.
        type: str
      mode:
        description: Its mode, such as V('0750'), as for M(ansible.builtin.file).
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
        description: The file; its directory must exist (or be one of O(directories)).
        type: path
        required: true
      content:
        description: The file's content (shown in the diff).
        type: str
      secret_content:
        description: The file's content, never shown or logged (a key, a token).
        type: str
      owner:
        description: Its owner (a name or a number); unset leaves it as it is.
        type: str
      group:
        description: Its group (a name or a number); unset leaves it as it is.
        type: str
      mode:
        description: Its mode, such as V('0600'), as for M(ansible.builtin.file).
        type: raw
  read:
    description:
      - Small text files to read before anything changes; returned in RV(contents).
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

import os
import tempfile

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.common.text.converters import to_bytes, to_text

_ATTRS = dict(
    owner=dict(type="str"),
    group=dict(type="str"),
    mode=dict(type="raw"),
)


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
    """The mode as a number when it is given as octal digits (else None: symbolic)."""
    if isinstance(mode, int):
        return mode
    if isinstance(mode, str) and mode.isdigit():
        return int(mode, 8)
    return None


def _read(path):
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None


def make_directory(module, spec, changed_paths, diffs):
    path = spec["path"]
    diff = {"before_header": path, "after_header": path, "before": {}, "after": {}}
    if not os.path.isdir(path):
        if os.path.lexists(path):
            module.fail_json(msg=f"{path} exists and is not a directory")
        diff["before"]["state"], diff["after"]["state"] = "absent", "directory"
        changed_paths.append(path)
        diffs.append(diff)
        if module.check_mode:
            return
        os.makedirs(path, mode=_octal(spec.get("mode")) or 0o755, exist_ok=True)
        module.set_fs_attributes_if_different(_file_args(path, spec), True)
        return
    if module.set_fs_attributes_if_different(_file_args(path, spec), False, diff):
        changed_paths.append(path)
        diffs.append(diff)


def write_file(module, spec, changed_paths, diffs):
    dest = spec["dest"]
    secret = spec.get("secret_content") is not None
    text = spec["secret_content"] if secret else spec["content"]
    wanted = to_bytes(text, errors="surrogate_or_strict")
    if os.path.isdir(dest):
        module.fail_json(msg=f"{dest} is a directory")
    have = _read(dest)
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
        fd, tmp = tempfile.mkstemp(prefix=".hafleet-", dir=directory)
        try:
            os.fchmod(fd, _octal(spec.get("mode")) or 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(wanted)
                f.flush()
                os.fsync(f.fileno())
            module.set_fs_attributes_if_different(_file_args(tmp, spec), False)
            os.replace(tmp, dest)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
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
    contents = {}
    for path in module.params["read"]:
        data = _read(path)
        contents[path] = None if data is None else to_text(data, errors="surrogate_or_replace")
    exists = {path: os.path.exists(path) for path in module.params["exists"]}
    changed_paths, diffs = [], []
    for spec in module.params["directories"]:
        make_directory(module, spec, changed_paths, diffs)
    for spec in module.params["files"]:
        write_file(module, spec, changed_paths, diffs)
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
