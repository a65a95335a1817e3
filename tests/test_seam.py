"""The family seam holds: server/ knows nothing of diffusion (it asks nodes.catalog for model listings, family
names and missing-model hints), and the families register and answer the questions the rest of the code asks."""
import ast
import re
from pathlib import Path

from nodes.families import FAMILIES, family_from_name, load_builtin_families

SERVER = Path(__file__).parents[1] / "server"
# What server/ may import from nodes/: the node declaration and registry, socket types, and the model catalog.
NODES_API = {"nodes", "nodes.node", "nodes.types", "nodes.catalog"}
# Words and patterns that belong to model families, not to a graph server.
FAMILY_WORDS = (r"sd[_ -]?xl|(?<![a-z])xl(?![a-z])|(?<![a-z])sd[_ -]?[0-9]|stable[_ -]?diffusion|refiner|turbo|"
                r"clip[_ -]?[lg](?![a-z])|big[_ -]?g(?![a-z])|open[_ -]?clip|unet|mmdit|t5|\.safetensors|\.ckpt|"
                r"\.sft|\.pth")


def server_sources() -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(SERVER.glob("*.py"))}


def test_server_imports_only_the_nodes_api():
    for name, source in server_sources().items():
        for node in ast.walk(ast.parse(source)):
            modules = []
            if isinstance(node, ast.Import):
                modules = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                modules = [node.module] + [f"{node.module}.{a.name}" for a in node.names if node.module == "nodes"]
            for module in modules:
                if module == "nodes" or module.startswith("nodes."):
                    assert module in NODES_API, f"server/{name} imports {module}; ask nodes.catalog instead"


def test_server_names_no_family_and_matches_no_file_names():
    load_builtin_families()
    words = re.compile("|".join([FAMILY_WORDS] + [re.escape(f.name) for f in FAMILIES.values()]
                                + [re.escape(f.title) for f in FAMILIES.values()]), re.IGNORECASE)
    found = {}
    for name, source in server_sources().items():
        hits = [(i + 1, m.group()) for i, line in enumerate(source.splitlines()) for m in words.finditer(line)]
        if hits:
            found[name] = hits
        # a regular expression in server/ would be matching names: model files are nodes/' business
        assert not re.search(r"^\s*(import re\b|from re import)", source, re.MULTILINE), f"server/{name} imports re"
    assert found == {}


def test_family_from_name():
    names = {"sd_xl_base_1.0.safetensors": "sdxl_base", "sd_xl_refiner_1.0.safetensors": "sdxl_refiner",
             "juggernautXL_v9.safetensors": "sdxl_base", "sdxl-turbo/": "sdxl_base", "pixel_art.safetensors": None,
             "v1-5-pruned-emaonly.safetensors": "sd1", "sd-v1-4.safetensors": "sd1", "dreamshaper_8.safetensors": None}
    for name, family in names.items():
        assert family_from_name(name) == family, name
