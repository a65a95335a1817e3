"""Packaging beyond pyproject.toml: an installed latentgraph carries its canvas, the canvas library and the shipped
workflows (server/bundle/, see server/canvas_lib.py), so `pip install .` alone serves a working canvas."""
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

REPO = Path(__file__).resolve().parent


class BuildWithCanvas(build_py):
    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):  # an editable install serves web/ and workflows/ from the checkout
            return
        sys.path.insert(0, str(REPO))
        from server.canvas_lib import bundle

        bundle(REPO, Path(self.build_lib) / "server" / "bundle")


setup(cmdclass={"build_py": BuildWithCanvas})
