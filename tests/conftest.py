"""Shared fixtures: the built-in node registry and a throw-away set of folders."""
import os

# The test models are tiny: one torch thread is faster than two spinning against each other (and against
# the server subprocesses some tests start, which inherit this), measured 0.44 s vs 9.2 s CPU per sampler run
# on a loaded 2-core machine.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

from nodes.node import Environment, load_builtin_nodes  # noqa: E402
from patience import patience  # noqa: E402


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_protocol(item):
    """pytest-timeout's limit per test (`timeout` in pyproject.toml, or --timeout), stretched by the load like
    the tests' own waits: it is there to end a hang, not to fail a slow machine."""
    base = float(item.config.getoption("timeout", None) or item.config.getini("timeout") or 0)
    if base > 0 and item.get_closest_marker("timeout") is None:
        item.add_marker(pytest.mark.timeout(patience(base)))
    yield


@pytest.fixture(scope="session")
def registry():
    return load_builtin_nodes()


@pytest.fixture
def env(tmp_path):
    """Input, output and temp folders under tmp_path (models stay unset)."""
    dirs = {name: tmp_path / name for name in ("input", "output", "temp")}
    for path in dirs.values():
        path.mkdir()
    return Environment(input_dir=str(dirs["input"]), output_dir=str(dirs["output"]), temp_dir=str(dirs["temp"]))
