"""Stand-in for the ``get-pip.py`` bootstrap script that ansible-test downloads.

``ansible-test ... --venv`` creates an empty virtual environment and bootstraps pip in it by
running ``get-pip-<version>.py`` fetched from a file host that this project's machines cannot
reach. It first looks for a cached copy at ``~/.ansible/test/cache/get_pip_<version>.py``;
``hack/install_get_pip_shim.py`` puts this file there.

It does what get-pip does, from what is at hand: ``python -m ensurepip`` installs the pip
wheel bundled with Python, then ``python -m pip install <the arguments>`` brings in the exact
versions that ansible-test asks for (e.g. ``pip==24.2``) from the package index.

Both run in subprocesses: ``ensurepip.bootstrap()`` in this process would point
``PIP_CONFIG_FILE`` at /dev/null and the pip run after it would miss the machine's pip
configuration (certificates, index). ansible-test runs this file through ``runpy`` as
``__main__`` with the interpreter of the new environment.
"""

import subprocess
import sys

# get-pip.py options that ``pip install`` does not know.
_NO_SETUPTOOLS = "--no-setuptools"
_NO_WHEEL = "--no-wheel"
_GET_PIP_ONLY = {_NO_SETUPTOOLS, _NO_WHEEL, "--no-pip"}


def _run(*args):
    command = [sys.executable, *args]
    print("get-pip shim: " + " ".join(command), flush=True)
    subprocess.run(command, check=True)


def _installed(distribution):
    probe = (
        "import importlib.metadata as m, sys\n"
        "try:\n"
        f"    m.version({distribution!r})\n"
        "except m.PackageNotFoundError:\n"
        "    sys.exit(1)\n"
    )
    return subprocess.run([sys.executable, "-c", probe], check=False).returncode == 0


def main(argv):
    options = [arg for arg in argv if arg not in _GET_PIP_ONLY]

    _run("-m", "ensurepip", "--upgrade", "--default-pip")
    _run("-m", "pip", "install", *options)

    # get-pip leaves setuptools and wheel out when asked to; ensurepip may bring setuptools.
    for flag, distribution in ((_NO_SETUPTOOLS, "setuptools"), (_NO_WHEEL, "wheel")):
        requested = any(arg.split("=")[0].strip().lower() == distribution for arg in options)
        if flag in argv and not requested and _installed(distribution):
            _run("-m", "pip", "uninstall", "--yes", "--quiet", distribution)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
