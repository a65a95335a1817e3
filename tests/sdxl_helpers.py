"""Shared by the SDXL node and workflow tests: the demo checkpoints, made once per test session."""
from __future__ import annotations

import contextlib
import io
import os

from nodes.node import Environment



def demo_models_dir(tmp_path_factory) -> str:
    """A models folder whose checkpoints/ is the session's demo checkpoints (oracles.demo_models writes them once):
    demo_sdxl_base.safetensors, demo_sdxl_refiner.safetensors and demo_sdxl_base_diffusers/ …; whose
    upscale_models/ holds the demo upscaler, controlnet/ the demo ControlNet, loras/ the demo LoRAs, clip_vision/
    the demo CLIP vision tower, and text_encoders/, diffusion_models/ and vae/ the demo checkpoints' parts as separate
    files (SD3's text encoders, MMDiT and VAE)."""
    from oracles import demo_models

    from nodes.catalog import make_demo_parts
    from nodes.clip_vision import write_demo_clip_vision
    from nodes.controlnet import write_demo_controlnet
    from nodes.demo import make_demo_loras
    from nodes.upscale_models import write_demo_upscaler

    root = tmp_path_factory.getbasetemp() / "sdxl_models"
    if not root.exists():
        root.mkdir()
        (root / "checkpoints").symlink_to(demo_models()["sdxl_base"].parent, target_is_directory=True)
        make_demo_parts(root / "checkpoints")
        write_demo_upscaler(root / "upscale_models")
        write_demo_controlnet(root / "controlnet")
        make_demo_loras(root / "loras")
        write_demo_clip_vision(root / "clip_vision")
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
