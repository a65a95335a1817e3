"""Shared by the template, missing-report and official-frontend tests: the MIT template package (installed by the
test extra, skipped when absent) and the demo checkpoints, generated once per test process."""
import atexit
import functools
import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest

SDXL_TEMPLATES = ("image_sdxl_simple", "sdxl_simple_example", "sdxl_refiner_prompt_example", "sdxlturbo_example")


def template_dir() -> str:
    pkg = pytest.importorskip("comfyui_workflow_templates_json", reason="test extra comfyui-workflow-templates-json")
    return os.path.join(os.path.dirname(pkg.__file__), "templates")


def template_names() -> list[str]:
    with open(os.path.join(template_dir(), "index.json")) as f:
        return [t["name"] for category in json.load(f) for t in category["templates"]]


def load_template(name: str) -> dict:
    with open(os.path.join(template_dir(), name + ".json")) as f:
        return json.load(f)


@functools.lru_cache(maxsize=1)
def demo_checkpoints() -> dict[str, Path]:
    """{"sdxl_base": path, "sdxl_refiner": path, ...}: tiny random-weight SDXL files in the real key layout."""
    from nodes.demo import make_demo_models
    folder = tempfile.mkdtemp(prefix="lg-demo-")
    atexit.register(shutil.rmtree, folder, True)
    return make_demo_models(folder)


def expected_checkpoints(workflow: dict) -> set[str]:
    """Every ckpt_name a UI workflow's CheckpointLoaderSimple nodes ask for (widget 0)."""
    return {n["widgets_values"][0] for n in workflow["nodes"] if n.get("type") == "CheckpointLoaderSimple"}


def place_demo_checkpoints(models_dir: Path, names: set[str]) -> None:
    """Put the demo base/refiner files under the names a workflow expects (refiner names get the refiner).
    Hard links (the loaders refuse symlinks leading out of the models folder), a copy across file systems."""
    demo = demo_checkpoints()
    folder = Path(models_dir) / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        source = demo["sdxl_refiner" if "refiner" in name.lower() else "sdxl_base"]
        target = folder / name
        if not target.exists():
            try:
                os.link(source, target)
            except OSError:
                shutil.copyfile(source, target)
