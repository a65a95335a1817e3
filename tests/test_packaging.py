"""An installed latentgraph carries its canvas: building the package (what `pip install .` does) bundles web/, the
pinned canvas library and the shipped workflows into server/bundle/, fetching the library from the npm registry,
checked against the lockfile, when web/node_modules lacks it."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from npm_registry import REPO, WEB, copy_web_without_library, local_registry, pin
from patience import patience

from server.canvas_lib import FILES, PACKAGE, fetch

pytestmark = pytest.mark.skipif(not (WEB / PACKAGE / FILES[2]).is_file(), reason="web/node_modules is missing (npm ci)")


def source_tree(dest: Path) -> Path:
    """A checkout without web/node_modules (as `pip install .` sees a fresh clone with no npm run)."""
    dest.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy2(REPO / name, dest / name)
    for name in ("server", "nodes", "workflows"):
        shutil.copytree(REPO / name, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
    copy_web_without_library(dest / "web")
    return dest


def test_package_build_bundles_the_canvas_its_library_and_the_workflows(tmp_path):
    src = source_tree(tmp_path / "src")
    with local_registry(tmp_path / "registry") as (url, integrity):
        pin(src / "web", integrity)
        out = tmp_path / "build"
        proc = subprocess.run([sys.executable, "setup.py", "-q", "build_py", "--build-lib", str(out)], cwd=src,
                              env={**os.environ, "npm_config_registry": url}, capture_output=True, text=True,
                              timeout=patience(300))
    assert proc.returncode == 0, proc.stderr
    bundle = out / "server" / "bundle"
    for name in FILES:
        assert (bundle / "web" / PACKAGE / name).read_bytes() == (WEB / PACKAGE / name).read_bytes(), name
    assert (bundle / "web" / "src" / "main.js").read_bytes() == (WEB / "src" / "main.js").read_bytes()
    assert sorted(p.name for p in (bundle / "workflows").glob("*.json")) == \
        sorted(p.name for p in (REPO / "workflows").glob("*.json"))
    assert (out / "server" / "app.py").is_file()
    vocab = out / "nodes" / "mmdit" / "t5-v1_1"  # the T5 tokenizer works offline, its notice travels with it
    assert {p.name for p in vocab.iterdir()} == {"tokenizer.json.gz", "NOTICE", "LICENSE-2.0.txt"}


def test_fetch_refuses_a_tarball_that_is_not_the_pinned_one(tmp_path):
    web = copy_web_without_library(tmp_path / "web")
    with local_registry(tmp_path / "registry") as (url, _):
        pin(web, "sha512-" + "A" * 86 + "==")
        with pytest.raises(ValueError, match="the lockfile pins"):
            fetch(web, registry=url)
    assert not (web / PACKAGE).exists()
