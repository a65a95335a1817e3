"""Shared fixtures: the built-in node registry and a throw-away set of folders."""
import pytest

from nodes.node import Environment, load_builtin_nodes


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
