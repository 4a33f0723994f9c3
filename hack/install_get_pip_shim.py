"""Install hack/get_pip_shim.py where ansible-test looks for its pip bootstrap script.

ansible-test names the file after the pip version it bootstraps
(``~/.ansible/test/cache/get_pip_24_2.py`` for ansible-core 2.19). That version is read from
the installed ansible-test, so an upgrade of ansible-core does not silently bring back the
download. Run with the interpreter of the environment that holds ansible-core.
"""

import filecmp
import importlib.util
import pathlib
import re
import shutil
import sys

SHIM = pathlib.Path(__file__).with_name("get_pip_shim.py")
CACHE = pathlib.Path("~/.ansible/test/cache").expanduser()


def pip_bootstrap_version():
    spec = importlib.util.find_spec("ansible_test")
    if spec is None or spec.origin is None:
        raise SystemExit("install_get_pip_shim: ansible-test is not installed in this Python")
    source = pathlib.Path(spec.origin).parent / "_internal" / "python_requirements.py"
    text = source.read_text(encoding="utf-8")
    body = text.partition("def get_venv_packages(")[2]
    match = re.search(r"""\bpip\s*=\s*['"]([0-9][0-9.]*)['"]""", body)
    if not match:
        raise SystemExit(f"install_get_pip_shim: no default pip version found in {source}")
    return match.group(1)


def main():
    version = pip_bootstrap_version()
    target = CACHE / f"get_pip_{version.replace('.', '_')}.py"
    if target.is_file() and filecmp.cmp(SHIM, target, shallow=False):
        print(f"install_get_pip_shim: {target} is up to date")
        return 0
    CACHE.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(SHIM, target)
    print(f"install_get_pip_shim: installed {target} (pip {version} bootstrap)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
