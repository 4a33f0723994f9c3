# Copyright: hafleet contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""meta/runtime.yml's action group hafleet names exactly the modules that talk to an agent."""

from __future__ import annotations

import ast
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[3]
MODULES = ROOT / "plugins" / "modules"


def documentation(path):
    """The DOCUMENTATION of a module, parsed, without importing it."""
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and any(
            isinstance(target, ast.Name) and target.id == "DOCUMENTATION" for target in node.targets
        ):
            return yaml.safe_load(ast.literal_eval(node.value))
    raise AssertionError(f"{path} has no DOCUMENTATION")


def fragments(name):
    return documentation(MODULES / f"{name}.py").get("extends_documentation_fragment", [])


def module_names():
    return sorted(p.stem for p in MODULES.glob("*.py") if p.stem != "__init__")


def group():
    runtime = yaml.safe_load((ROOT / "meta" / "runtime.yml").read_text())
    return runtime["action_groups"]["hafleet"]


def test_the_group_names_every_module_with_the_api_options():
    api_modules = [name for name in module_names() if "hafleet.cluster.api" in fragments(name)]
    assert api_modules, "no module extends hafleet.cluster.api"
    assert sorted(group()) == api_modules


def test_the_group_names_only_modules_that_exist_once():
    members = group()
    assert len(members) == len(set(members))
    assert set(members) <= set(module_names())


def test_each_module_documents_its_membership_as_it_is():
    documented = [
        name
        for name in module_names()
        if "hafleet.cluster.attributes.actiongroup_hafleet" in fragments(name)
    ]
    assert documented == sorted(group())


def test_every_module_takes_the_shared_attributes():
    for name in module_names():
        assert "hafleet.cluster.attributes" in fragments(name), name
