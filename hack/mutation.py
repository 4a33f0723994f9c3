"""make mutation: mutmut 3 over the agent's fast tests for its pure modules, and the score.

mutmut 3 guesses the code from a ``src/`` directory beside the current directory and works in
``./mutants``; the agent's package sits in ``agent/src``. So this script builds a throwaway
tree in build/mutation (src/hafleet_agent copied from the work tree, the fast tests, a
pytest.ini, a setup.cfg naming every file mutmut must leave alone), runs ``mutmut run`` there
and reads its results (mutants/**/*.py.meta). The work tree itself is never touched.

The score counts a mutant once it is judged: killed (a test failed, or it ran out of time:
a mutant that loops is caught), or survived (every test passed, or no test ran its function).
Left out of it, and listed apart: mutants that only change the text of a message (found here
from the mutant's syntax tree, see ``message_only``) and the equivalent mutants that
docs/mutation.md lists by hand (same behaviour, no test can tell them apart).

    python hack/mutation.py [--module codec.py ...] [--jobs N] [--report-only] [--show]

Prints a line per module, then as its last line ``mutation: score=NN.N% killed=K survived=S``;
exits 1 when a module scores under --threshold (90 %).
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "agent" / "src" / "hafleet_agent"
WORK = ROOT / "build" / "mutation"
DOC = ROOT / "docs" / "mutation.md"

# The pure modules under mutation, relative to the package. When a module is split, its
# parts take its place here (state.py's commands and KV store moved to commands.py, kv.py).
MODULES = [
    "state.py",
    "commands.py",
    "kv.py",
    "weights.py",
    "codec.py",
    "addr.py",
    "ids.py",
    "raft/log.py",
    "raft/progress.py",
    "raft/quorum.py",
    "raft/status.py",
    "balancer/plan.py",
]

# The fast tests: no cluster, no network, a few seconds in all. test_purity and test_layering
# read the source text, which mutmut rewrites (its trampolines import os), so they stay out.
TESTS = [
    "tests/agent/state",
    "tests/agent/raft",
    "tests/agent/transport/test_codec.py",
    "tests/agent/transport/test_codec_caps.py",
    "tests/agent/transport/test_codec_strict.py",
    "tests/agent/balancer/test_balancer_plan.py",
    "tests/agent/balancer/test_balancer_plan_branches.py",
]
# Repository files that some of those tests read by path (relative to the repository root),
# and the helpers every test may import (pytest.ini: pythonpath = tests/support).
TEST_DATA = ["plugins/module_utils/_api_client.py", "tests/support"]
SOURCE_TEXT_TESTS = {"test_purity.py", "test_layering.py"}
# Tests left out of the mutation run: the codec's size and memory checks at the real caps
# (65,536 entries and members) take a minute each through mutmut's trampolines, for every
# mutant that survives them; test_codec_caps.py checks the same boundaries with the caps
# lowered. Their names go into the conftest below.
SLOW_TESTS = (
    "test_the_largest_legal_message_decodes_and_one_more_does_not",
    "test_the_costliest_valid_message_stays_within_the_documented_bound",
)
THRESHOLD = 90.0

PYTEST_INI = """\
[pytest]
testpaths = tests
pythonpath = tests/support
addopts = -p no:cacheprovider -p no:randomly
"""

# A conftest for the copy only: hypothesis draws the same examples on every run (a score that
# does not move between runs of the same code) and is not held to deadlines (the trampolines
# slow every call); a mutant whose tests run away is ended as a timeout, not as a survivor.
CONFTEST = '''\
"""Mutation-run settings (hack/mutation.py writes this file into build/mutation)."""

import json
import os
import resource
import signal

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "mutation",
    derandomize=True,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    database=None,
)
settings.load_profile("mutation")

# At most this many examples a property test (some fuzzers ask for 2000): each of thousands
# of mutant runs pays for them, and a mutant that a property catches at all, it catches early.
MAX_EXAMPLES = 100
_settings_init = settings.__init__


def _capped_init(self, parent=None, **kwargs):
    if isinstance(kwargs.get("max_examples"), int) and kwargs["max_examples"] > MAX_EXAMPLES:
        kwargs["max_examples"] = MAX_EXAMPLES
    _settings_init(self, parent, **kwargs)


settings.__init__ = _capped_init

SLOW_TESTS = @SLOW@


def pytest_collection_modifyitems(config, items):
    slow = [item for item in items if item.originalname in SLOW_TESTS]
    if slow:
        items[:] = [item for item in items if item.originalname not in SLOW_TESTS]
        config.hook.pytest_deselected(items=slow)


NOT_A_MUTANT = {"", "stats", "fail", "list_all_tests", "mutant_generation"}
TIMEOUT_EXIT = 36  # mutmut's exit code for a timeout
_durations = {}


def _mutant_run():
    return os.environ.get("MUTANT_UNDER_TEST", "") not in NOT_A_MUTANT


def pytest_configure(config):
    if not _mutant_run():
        return
    # mutmut ends a mutant's run by SIGKILL at twice its tests' measured time in CPU seconds
    # and records that as a survivor; pytest's own start-up alone can take that long. Each
    # test gets its own CPU budget below instead; this limit is only the backstop.
    try:
        resource.setrlimit(resource.RLIMIT_CPU, (3600, 3600))
    except (ValueError, OSError):
        pass
    signal.signal(signal.SIGPROF, lambda *_: os._exit(TIMEOUT_EXIT))
    try:
        with open("mutmut-stats.json") as f:
            _durations.update(json.load(f)["duration_by_test"])
    except (OSError, ValueError, KeyError):
        pass


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    # A mutant whose test takes five times its clean run plus 10 CPU seconds loops: a timeout,
    # which counts as detected.
    if not _mutant_run():
        yield
        return
    signal.setitimer(signal.ITIMER_PROF, 10 + 5 * _durations.get(item.nodeid, 20.0))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_PROF, 0)
'''

# Starts mutmut 3.2 with three repairs to its pytest runner:
# - it hands pytest the node ids of a mutant's tests on the command line; pytest cannot find
#   a parametrized test whose id it escaped ("\\xe9") and exits 4, which mutmut then counts as
#   a kill. Here pytest collects those tests' files and keeps the tests by node id;
# - it reads item._nodeid, which pytest 9 no longer has;
# - it keeps the duration of a test's teardown as the test's duration (its time estimates and
#   CPU limits were near zero); here a test's duration is its setup, call and teardown;
# and it does not run the mutants the score leaves out (message-only, equivalent).
RUNNER = """\
import sys

import mutmut
import mutmut.__main__ as m

sys.path.insert(0, "@HACK@")
from mutation import not_to_run  # noqa: E402


class Select:
    def __init__(self, ids):
        self.order = {nodeid: n for n, nodeid in enumerate(ids)}

    def pytest_collection_modifyitems(self, config, items):
        # in the order mutmut gave them (fastest first), so that a kill comes early
        keep = [i for i in items if i.nodeid in self.order]
        keep.sort(key=lambda i: self.order[i.nodeid])
        dropped = [item for item in items if item.nodeid not in self.order]
        items[:] = keep
        if dropped:
            config.hook.pytest_deselected(items=dropped)


def run_tests(self, *, mutant_name, tests):
    tests = list(tests)
    files = sorted({t.partition("::")[0] for t in tests})
    plugins = [Select(tests)] if tests else []
    with m.change_cwd("mutants"):
        args = ["-x", "-q", "--import-mode=append", *files]
        return int(self.execute_pytest(args, plugins=plugins))


class Stats:
    def pytest_runtest_teardown(self, item, nextitem):
        for function in mutmut._stats:
            mutmut.tests_by_mangled_function_name[function].add(item.nodeid)
        mutmut._stats.clear()

    def pytest_runtest_makereport(self, item, call):
        spent = 0.0 if call.when == "setup" else mutmut.duration_by_test.get(item.nodeid, 0.0)
        mutmut.duration_by_test[item.nodeid] = spent + call.duration


def run_stats(self, *, tests):
    tests = list(tests)
    files = sorted({t.partition("::")[0] for t in tests})
    plugins = [Stats(), Select(tests)] if tests else [Stats()]
    with m.change_cwd("mutants"):
        args = ["-x", "-q", "--import-mode=append", *files]
        return int(self.execute_pytest(args, plugins=plugins))


def collect_source_file_mutation_data(*, mutant_names):
    mutants, by_path = _collect(mutant_names=mutant_names)
    skip = not_to_run()
    for data, key, result in mutants:
        if key in skip and result is None:
            data.exit_code_by_key[key] = 34  # skipped
    for data in by_path.values():
        data.save()
    return [x for x in mutants if x[1] not in skip], by_path


m.PytestRunner.run_tests = run_tests
m.PytestRunner.run_stats = run_stats
_collect = m.collect_source_file_mutation_data
m.collect_source_file_mutation_data = collect_source_file_mutation_data
sys.argv[0] = "mutmut"
m.cli()
"""

STATUS = {
    1: "killed",
    3: "killed",
    0: "survived",
    5: "no tests",
    33: "no tests",
    34: "skipped",
    35: "suspicious",
    36: "timeout",
    152: "timeout",
    None: "not checked",
}
DETECTED = {"killed", "timeout", "suspicious"}
UNDETECTED = {"survived", "no tests"}

# The parameter names of an exception's __init__ that carry its message.
MESSAGE_NAMES = {"message", "msg", "detail", "reason", "text", "why", "what"}
LOG_METHODS = {"debug", "info", "warning", "warn", "error", "exception", "critical", "log"}


# ---------------------------------------------------------------- the tree mutmut works in


def prepare(modules: list[str], ignore: list[str]) -> None:
    if WORK.exists():
        shutil.rmtree(WORK)
    src = WORK / "src" / "hafleet_agent"
    shutil.copytree(PACKAGE, src, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in TESTS:
        path = ROOT / name
        dest = WORK / name
        if path.is_dir():
            shutil.copytree(
                path,
                dest,
                ignore=shutil.ignore_patterns("__pycache__", *SOURCE_TEXT_TESTS, *ignore),
            )
        else:
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, dest)
    for name in TEST_DATA:
        (WORK / name).parent.mkdir(parents=True, exist_ok=True)
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, WORK / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(ROOT / name, WORK / name)
    (WORK / "tests" / "conftest.py").write_text(CONFTEST.replace("@SLOW@", repr(SLOW_TESTS)))
    (WORK / "pytest.ini").write_text(PYTEST_INI)
    wanted = {f"src/hafleet_agent/{m}" for m in modules}
    leave = sorted(
        str(p.relative_to(WORK))
        for p in (WORK / "src").rglob("*.py")
        if str(p.relative_to(WORK)) not in wanted
    )
    missing = wanted - {str(p.relative_to(WORK)) for p in (WORK / "src").rglob("*.py")}
    if missing:
        sys.exit(f"mutation: no such module: {', '.join(sorted(missing))}")
    (WORK / "setup.cfg").write_text(
        "[mutmut]\ndo_not_mutate =\n"
        + "".join(f"    {p}\n" for p in leave)
        + "also_copy =\n    pytest.ini\n"
        + "".join(f"    {p}\n" for p in sorted({n.split("/")[0] for n in TEST_DATA}))
    )


def run_mutmut(jobs: int) -> None:
    log = WORK / "mutmut.log"
    (WORK / "mutmut_run.py").write_text(RUNNER.replace("@HACK@", str(ROOT / "hack")))
    cmd = [sys.executable, "mutmut_run.py", "run", "--max-children", str(jobs)]
    # pytest's plugin autoload scans every installed distribution on each of the thousands of
    # runs; these tests need none of those plugins.
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", PYTEST_DISABLE_PLUGIN_AUTOLOAD="1")
    with log.open("w") as out:
        rc = subprocess.run(cmd, cwd=WORK, stdout=out, stderr=subprocess.STDOUT, env=env).returncode
    if rc != 0:
        tail = log.read_text(errors="replace").replace("\r", "\n").splitlines()[-40:]
        print("\n".join(tail))
        sys.exit(f"mutation: mutmut run failed (exit {rc}); the whole output is in {log}")


# ---------------------------------------------------------------- reading the results


def functions(path: Path) -> dict[str, ast.FunctionDef | ast.AsyncFunctionDef]:
    """The mutants file's functions by name: ``x_f__mutmut_orig``, ``x_f__mutmut_3``,
    ``xǁClassǁmethod__mutmut_1``... (module level and one class level down)."""
    tree = ast.parse(path.read_text())
    found: dict[str, ast.FunctionDef | ast.AsyncFunctionDef] = {}
    for node in tree.body:
        bodies = [node] if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) else []
        if isinstance(node, ast.ClassDef):
            bodies = [n for n in node.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]
        for fn in bodies:
            if "__mutmut_" in fn.name:
                found[fn.name] = fn
    return found


Step = tuple[ast.AST, str, int | None]  # (node, field, index in that field's list)


@dataclass
class Change:
    before: object  # an AST node, a list of them, or a plain value
    after: object
    path: list[Step]  # from the function down to the change


def differences(a: object, b: object, path: list[Step], out: list[Change]) -> None:
    if type(a) is not type(b):
        out.append(Change(a, b, path))
    elif isinstance(a, ast.AST):
        if isinstance(a, ast.Constant) and (
            type(a.value) is not type(b.value) or a.value != b.value  # type: ignore[attr-defined]
        ):
            out.append(Change(a, b, path))
            return
        for name in a._fields:
            if path or name != "name":  # the mutant's own name differs, nothing else may
                x, y = getattr(a, name), getattr(b, name, None)
                if isinstance(x, list) and isinstance(y, list) and len(x) == len(y):
                    for i, (xi, yi) in enumerate(zip(x, y, strict=True)):
                        differences(xi, yi, [*path, (a, name, i)], out)
                else:
                    differences(x, y, [*path, (a, name, None)], out)
    elif isinstance(a, list):  # lists of different lengths (an element dropped)
        out.append(Change(a, b, path))
    elif a != b:
        out.append(Change(a, b, path))


def _is_log_call(call: ast.Call) -> bool:
    func = call.func
    return (
        isinstance(func, ast.Attribute)
        and func.attr in LOG_METHODS
        and "log" in ast.unparse(func.value).lower()
    )


def _is_exception_call(call: ast.Call, parent: ast.AST | None) -> bool:
    name = ast.unparse(call.func).rsplit(".", 1)[-1]
    raised = isinstance(parent, ast.Raise) and parent.exc is call
    return raised or name.endswith(("Error", "Exception", "Warning"))


def _is_text(node: object) -> bool:
    if isinstance(node, list):
        return bool(node) and all(_is_text(n) for n in node)
    if isinstance(node, ast.keyword):
        return _is_text(node.value)
    return isinstance(node, ast.JoinedStr) or (
        isinstance(node, ast.Constant) and isinstance(node.value, str)
    )


def _callee(call: ast.Call) -> str:
    """The last name of what is called: ``self.uint(...)``, ``uint(...)`` -> ``uint``."""
    func = call.func
    return func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")


def _params(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> list[str]:
    names = [a.arg for a in (*fn.args.posonlyargs, *fn.args.args)]
    return names[1:] if names and names[0] in ("self", "cls") else names


class MessageParams:
    """The parameters of a module's functions that only ever reach messages: used in
    the arguments of exception and logging calls, or handed on to such a parameter (as
    ``what`` in ``_u64(v, what)`` -> ``raise CodecError(f"{what}: ...")``). A literal passed
    for one of them (or its default) changes message text only. Functions are known by
    their last name (``self.uint``, ``r.uint`` and ``uint`` are the same); a name defined
    twice must qualify in both."""

    def __init__(self, source: str, package: Path | None = None) -> None:
        tree = ast.parse(source)
        # the __init__ of the exception classes, and the functions, defined here or imported
        # from the package (``from .commands import StateError``, ``from ..addr import x``)
        self.inits: dict[str, ast.FunctionDef] = {}
        self.defs: dict[str, list[ast.FunctionDef | ast.AsyncFunctionDef]] = {}
        local: set[str] = set()
        trees = [(tree, None)]
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and package is not None and node.level >= 1:
                base = package
                for _ in range(node.level - 1):
                    base = base.parent
                other = base / ((node.module or "").replace(".", "/") + ".py")
                if other.is_file():
                    trees.append((ast.parse(other.read_text()), {a.name for a in node.names}))
        for t, names in trees:
            for node in ast.walk(t):
                if isinstance(node, ast.ClassDef):
                    for item in node.body:
                        if isinstance(item, ast.FunctionDef) and item.name == "__init__":
                            self.inits[node.name] = item
            body = ast.walk(t) if names is None else t.body
            for node in body:
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    if names is None or node.name in names:
                        self.defs.setdefault(node.name, []).append(node)
                        if names is None:
                            local.add(node.name)
        self.parents: dict[ast.AST, ast.AST] = {}
        for t, _ in trees:
            for node in ast.walk(t):
                for child in ast.iter_child_nodes(node):
                    self.parents[child] = node
        self.ok: set[tuple[str, str]] = {
            (name, p)
            for name, fns in self.defs.items()
            for fn in fns
            for p in [*_params(fn), *(a.arg for a in fn.args.kwonlyargs)]
        }
        # local names bound to methods (``uint, array = r.uint, r.array``)
        self.alias: dict[str, str] = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign) and len(node.targets) == 1:
                target, value = node.targets[0], node.value
                pairs = [(target, value)]
                if isinstance(target, ast.Tuple) and isinstance(value, ast.Tuple):
                    pairs = list(zip(target.elts, value.elts, strict=False))
                for t, v in pairs:
                    if isinstance(t, ast.Name) and isinstance(v, ast.Attribute):
                        self.alias[t.id] = v.attr
        # functions whose result only ever goes into messages (codec's _kind)
        self.functions: set[str] = set()
        for name in sorted(local):
            calls = [
                n for n in ast.walk(tree) if isinstance(n, ast.Call) and self.callee(n) == name
            ]
            refs = [
                n
                for n in ast.walk(tree)
                if (isinstance(n, ast.Name) and n.id == name)
                or (isinstance(n, ast.Attribute) and n.attr == name)
            ]
            if calls and len(refs) == len(calls) and all(map(self._result_in_message, calls)):
                self.functions.add(name)
        changed = True
        while changed:  # the largest set that holds: drop what a use contradicts
            changed = False
            for name, p in sorted(self.ok):
                if not all(self._only_in_messages(fn, p) for fn in self.defs[name]):
                    self.ok.discard((name, p))
                    changed = True

    def is_message(self, callee: str, position: int | None, keyword: str | None) -> bool:
        fns = self.defs.get(callee)
        if not fns:
            return False
        for fn in fns:
            params = _params(fn)
            if keyword is None:
                if position is None or position >= len(params):
                    return False
                keyword = params[position]
            if (callee, keyword) not in self.ok:
                return False
        return True

    def _only_in_messages(self, fn: ast.FunctionDef | ast.AsyncFunctionDef, param: str) -> bool:
        if param not in _params(fn) and param not in (a.arg for a in fn.args.kwonlyargs):
            return False
        for node in ast.walk(fn):
            if isinstance(node, ast.Name) and node.id == param:
                if not isinstance(node.ctx, ast.Load) or not self._use_in_message(node):
                    return False
        return True

    def callee(self, call: ast.Call) -> str:
        name = _callee(call)
        return self.alias.get(name, name)

    def message_arg(self, call: ast.Call, pos: int | None, kw: str | None) -> bool:
        """Whether the argument at ``pos`` (or keyword ``kw``) of exception call ``call`` is
        its message: by the parameter's name when the class's __init__ is known (a status or
        a machine-readable code is not a message), else any positional argument."""
        init = self.inits.get(_callee(call))
        if init is not None:
            names = _params(init)
            name = (
                kw
                if kw is not None
                else names[pos]
                if pos is not None and pos < len(names)
                else None
            )
            return name in MESSAGE_NAMES
        return pos is not None or kw in MESSAGE_NAMES

    def _arg_of(self, call: ast.Call, child: ast.AST) -> tuple[int | None, str | None]:
        if isinstance(child, ast.keyword):
            return None, child.arg
        return (call.args.index(child) if child in call.args else None), None

    def _result_in_message(self, call: ast.Call) -> bool:
        child, parent = call, self.parents.get(call)
        while parent is not None and not isinstance(parent, ast.stmt | ast.Lambda):
            if isinstance(parent, ast.Call):
                if child is parent.func:
                    return False
                if _is_log_call(parent):
                    return True
                return _is_exception_call(parent, self.parents.get(parent)) and self.message_arg(
                    parent, *self._arg_of(parent, child)
                )
            child, parent = parent, self.parents.get(parent)
        return False

    def _use_in_message(self, node: ast.AST) -> bool:
        child, parent = node, self.parents.get(node)
        while parent is not None:
            if isinstance(parent, ast.Call) and child is not parent.func:
                if _is_log_call(parent):
                    return True
                if _is_exception_call(parent, self.parents.get(parent)):
                    return self.message_arg(parent, *self._arg_of(parent, child))
                if child is node or (isinstance(child, ast.keyword) and child.value is node):
                    pos = parent.args.index(node) if node in parent.args else None
                    kw = child.arg if isinstance(child, ast.keyword) else None
                    return self.is_message(self.callee(parent), pos, kw)
                if not isinstance(child, ast.JoinedStr | ast.FormattedValue | ast.keyword):
                    return False
            elif isinstance(parent, ast.stmt | ast.Lambda | ast.comprehension):
                return False
            child, parent = parent, self.parents.get(parent)
        return False


def _in_message(change: Change, params: MessageParams) -> bool:
    before = change.before
    if isinstance(before, list) and isinstance(change.after, list):
        before = [n for n in before if n not in change.after]  # the dropped arguments
    for i in range(len(change.path) - 1, -1, -1):
        node, name, index = change.path[i]
        if isinstance(node, ast.arguments) and name in ("defaults", "kw_defaults"):
            fn = change.path[i - 1][0] if i else None
            if index is None or not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
                return False
            if name == "defaults":
                names = [a.arg for a in (*fn.args.posonlyargs, *fn.args.args)]
                param = names[len(names) - len(node.defaults) + index]
            else:
                param = fn.args.kwonlyargs[index].arg
            return _is_text(before) and (_orig(fn), param) in params.ok
        if not isinstance(node, ast.Call) or name not in ("args", "keywords"):
            continue
        if _is_log_call(node):
            return True  # any change to a log call's arguments changes the line only
        parent = change.path[i - 1][0] if i else None
        if _is_exception_call(node, parent):
            if index is not None:
                arg = node.args[index] if name == "args" else node.keywords[index].value
                kw = node.keywords[index].arg if name == "keywords" else None
                pos = index if name == "args" else None
                # an f-string (or a literal) message: whatever changes in it is its text
                if _is_text(arg) and params.message_arg(node, pos, kw):
                    return True
            if not _is_text(before):
                return False
            if index is None:  # arguments dropped
                dropped = before if isinstance(before, list) else [before]
                return all(params.message_arg(node, *params._arg_of(node, d)) for d in dropped)
            kw = node.keywords[index].arg if name == "keywords" else None
            return params.message_arg(node, index if name == "args" else None, kw)
        last = i == len(change.path) - 1 or (name == "keywords" and i == len(change.path) - 2)
        # a parameter that only reaches messages: whatever is handed to it is message text
        if last:
            if index is None:  # arguments dropped: the parameters' defaults take their place
                dropped = before if isinstance(before, list) else [before]
                args = [params._arg_of(node, d) for d in dropped]
            else:
                kw = node.keywords[index].arg if name == "keywords" else None
                args = [(index if name == "args" else None, kw)]
            if all(params.is_message(params.callee(node), pos, kw) for pos, kw in args):
                return True
        # any other call: the change may still sit inside an enclosing message
    return False


def _orig(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> str:
    """``xǁ_Readerǁuint__mutmut_orig`` -> ``uint``; ``x_check__mutmut_3`` -> ``check``."""
    mangled = fn.name.partition("__mutmut_")[0]
    return mangled.rpartition("ǁ")[2] if "ǁ" in mangled else mangled.removeprefix("x_")


def message_only(orig: ast.AST, mutant: ast.AST, params: MessageParams) -> bool:
    """True when every change of the mutant lies in a message: the arguments of a logging
    call (``log.warning(...)``: only the log line changes); a string literal or f-string
    passed to an exception (``raise X("...")``, ``FooError(f"...")``), changed or dropped; or
    a string literal given to a parameter that only reaches messages (see MessageParams)."""
    changes: list[Change] = []
    differences(orig, mutant, [], changes)
    return bool(changes) and all(_in_message(c, params) for c in changes)


@dataclass
class Module:
    name: str
    killed: list[str] = field(default_factory=list)
    survived: list[str] = field(default_factory=list)
    message: list[str] = field(default_factory=list)
    equivalent: list[str] = field(default_factory=list)
    other: list[str] = field(default_factory=list)  # skipped, not checked

    @property
    def score(self) -> float:
        judged = len(self.killed) + len(self.survived)
        return 100.0 * len(self.killed) / judged if judged else 100.0


def diff_lines(orig: ast.FunctionDef, mutant: ast.FunctionDef) -> tuple[list[str], list[str]]:
    name = mutant.name
    mutant.name = orig.name
    a = ast.unparse(orig).splitlines()
    b = ast.unparse(mutant).splitlines()
    mutant.name = name
    removed = [x.strip() for x in a if x not in b]
    added = [x.strip() for x in b if x not in a]
    return removed, added


def equivalents() -> set[tuple[str, str, str, str]]:
    """docs/mutation.md's hand list: rows ``| module | function | `before` | `after` | why |``
    under the heading "Equivalent mutants"; before/after are the changed line as ast.unparse
    writes it."""
    found: set[tuple[str, str, str, str]] = set()
    if not DOC.exists():
        return found
    section = DOC.read_text().split("## Equivalent mutants", 1)[-1].split("\n## ", 1)[0]
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 4 and cells[2].startswith("`") and cells[3].startswith("`"):
            found.add((cells[0], cells[1], cells[2].strip("`"), cells[3].strip("`")))
    return found


def function_of(key: str) -> str:
    """``hafleet_agent.state.xǁStateMachineǁapply__mutmut_3`` -> ``StateMachine.apply``."""
    mangled = key.rpartition(".")[2].partition("__mutmut_")[0]
    if mangled.startswith("xǁ"):
        return ".".join(mangled[2:].split("ǁ"))
    return mangled.removeprefix("x_")


def classify(name: str, keys: list[str]) -> dict[str, tuple[str, str]]:
    """For each mutant of module ``name``: ("message" | "equivalent" | "", its change)."""
    equiv = equivalents()
    fns = functions(WORK / "mutants" / "src" / "hafleet_agent" / name)
    source = WORK / "src" / "hafleet_agent" / name
    params = MessageParams(source.read_text(), source.parent)
    out: dict[str, tuple[str, str]] = {}
    for key in keys:
        mangled = key.rpartition(".")[2]
        orig = fns[mangled.partition("__mutmut_")[0] + "__mutmut_orig"]
        mutant = fns[mangled]
        removed, added = diff_lines(orig, mutant)
        change = f"{function_of(key)}: -{removed} +{added}"
        line = (removed[0] if removed else "", added[0] if added else "")
        if _orig(orig) in params.functions or message_only(orig, mutant, params):
            out[key] = ("message", change)
        elif (name, function_of(key), *line) in equiv:
            out[key] = ("equivalent", change)
        else:
            out[key] = ("", change)
    return out


def not_to_run() -> set[str]:
    """The mutants the score leaves out, which mutmut need not run (called by RUNNER, in
    build/mutation, once mutmut has written the mutants)."""
    skip: set[str] = set()
    src = WORK / "mutants" / "src" / "hafleet_agent"
    for meta in src.rglob("*.py.meta"):
        name = str(meta.relative_to(src))[: -len(".meta")]
        keys = list(json.loads(meta.read_text())["exit_code_by_key"])
        skip.update(k for k, (kind, _) in classify(name, keys).items() if kind)
    return skip


def read_results(modules: list[str]) -> tuple[list[Module], dict[str, str]]:
    results: list[Module] = []
    diffs: dict[str, str] = {}
    for name in modules:
        module = Module(name)
        results.append(module)
        meta = WORK / "mutants" / "src" / "hafleet_agent" / (name + ".meta")
        if not meta.exists():
            sys.exit(f"mutation: no results for {name} ({meta} is missing)")
        codes = json.loads(meta.read_text())["exit_code_by_key"]
        for key, (kind, change) in sorted(classify(name, list(codes)).items()):
            code = codes[key]
            status = STATUS.get(code, "killed" if code else "survived")
            diffs[key] = f"{status}: {change}"
            if kind == "message":
                module.message.append(key)
            elif kind == "equivalent":
                module.equivalent.append(key)
            elif status in DETECTED:
                module.killed.append(key)
            elif status in UNDETECTED:
                module.survived.append(key)
            else:
                module.other.append(key)
    return results, diffs


def report(results: list[Module], diffs: dict[str, str], show: bool, threshold: float) -> int:
    width = max(len(m.name) for m in results)
    failed = False
    for m in results:
        extra = f" ({len(m.other)} not run)" if m.other else ""
        print(
            f"  {m.name:<{width}}  score={m.score:5.1f}%  killed={len(m.killed)}"
            f" survived={len(m.survived)}  message-only={len(m.message)}"
            f" equivalent={len(m.equivalent)}{extra}"
        )
        if show:
            for key in m.survived:
                print(f"      {key.rpartition('.')[2]}  {diffs[key]}")
        failed = failed or m.score < threshold
    killed = sum(len(m.killed) for m in results)
    survived = sum(len(m.survived) for m in results)
    score = 100.0 * killed / (killed + survived) if killed + survived else 100.0
    print(f"mutation: score={score:.1f}% killed={killed} survived={survived}")
    return 1 if failed else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--module", action="append", help="a module of MODULES (repeatable)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--threshold", type=float, default=THRESHOLD)
    parser.add_argument("--ignore", action="append", help="a test file to leave out")
    parser.add_argument("--report-only", action="store_true", help="read the last run again")
    parser.add_argument("--show", action="store_true", help="list the survivors' changes")
    args = parser.parse_args()
    modules = args.module or MODULES
    start = time.monotonic()
    if not args.report_only:
        prepare(modules, args.ignore or [])
        run_mutmut(args.jobs)
        print(f"mutation: mutmut ran {len(modules)} module(s) in {time.monotonic() - start:.0f}s")
    results, diffs = read_results(modules)
    return report(results, diffs, args.show, args.threshold)


if __name__ == "__main__":
    sys.exit(main())
