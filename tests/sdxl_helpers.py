"""Shared by the SDXL node and workflow tests: the demo checkpoints, made once per test session."""
from __future__ import annotations

import contextlib
import io
import os

from nodes.node import Environment

DEMO_FILES = ("demo_sdxl_base.safetensors", "demo_sdxl_refiner.safetensors", "demo_sdxl_base_diffusers")


def demo_models_dir(tmp_path_factory) -> str:
    """<basetemp>/demo_models with checkpoints/ holding the demo base, refiner and diffusers copy."""
    from nodes.demo import make_demo_models

    root = tmp_path_factory.getbasetemp() / "demo_models"
    folder = root / "checkpoints"
    if not all((folder / name).exists() for name in DEMO_FILES):
        make_demo_models(folder)
    return str(root)


def environment(models: str, tmp_path) -> Environment:
    dirs = {name: tmp_path / name for name in ("input", "output", "temp")}
    for path in dirs.values():
        path.mkdir(exist_ok=True)
    return Environment(models_dir=models, input_dir=str(dirs["input"]), output_dir=str(dirs["output"]),
                       temp_dir=str(dirs["temp"]))


def cli(*argv: str) -> tuple[int, str, str]:
    """server.cli.main in-process: (exit status, stdout, stderr)."""
    from server.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(list(argv))
    return rc, out.getvalue(), err.getvalue()


def run_workflow(path: str, env: Environment, *sets: str) -> dict[str, str]:
    """`latentgraph run` a workflow; returns {file name: path} of the images it wrote."""
    args = ["run", path, "--models", env.models_dir, "--input", env.input_dir, "--out", env.output_dir, "-q"]
    for item in sets:
        args += ["--set", item]
    rc, out, err = cli(*args)
    assert rc == 0, err
    paths = [line for line in out.splitlines() if line.endswith(".png")]
    assert paths, f"{path} wrote no images:\n{out}\n{err}"
    return {os.path.basename(p): p for p in paths}
