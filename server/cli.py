"""The `latentgraph` command: run, validate and list nodes headless; inspect what made an image; start the server;
make the demo model; fetch the canvas library without npm.

Every failure a user can cause (missing file, bad JSON, invalid graph, a node raising) ends in a readable
message on stderr and a non-zero exit status, never a traceback."""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import uuid
from pathlib import Path
from typing import Any

from nodes import catalog
from nodes.node import Environment, load_builtin_nodes

from .executor import Executor, Hooks
from .graph import is_seed, load_prompt, read_png_json, read_png_workflow, set_ui_widget, ui_to_api, validate
from .migrations import NewerVersion
from .provenance import HashCache, mismatches

EXIT_INVALID = 1   # the graph is invalid or a node failed
EXIT_USAGE = 2     # the file could not be read, or arguments are wrong
MODELS_ENV = "LATENTGRAPH_MODELS"


class CLIError(Exception):
    """A user-facing problem; printed without a traceback."""


# -- shared steps ------------------------------------------------------------------------------------------------

def is_png(path: str) -> bool:
    if not os.path.isfile(path):
        raise CLIError(f"{path}: no such file")
    with open(path, "rb") as f:
        return f.read(8).startswith(b"\x89PNG")


def png_chunks(path: str, *keys: str) -> dict:
    try:
        return read_png_json(path, keys)
    except ValueError as exc:
        raise CLIError(str(exc)) from None


def read_workflow(path: str) -> Any:
    """JSON from a .json file, or the workflow embedded in a PNG."""
    if is_png(path):
        try:
            return read_png_workflow(path)
        except ValueError as exc:
            raise CLIError(str(exc)) from None
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CLIError(f"{path}: not valid JSON ({exc})") from None


def hash_cache(args) -> HashCache:
    return HashCache(os.path.join(args.data, "model_hashes.json"))


def environment(args) -> Environment:
    return Environment(models_dir=args.models, input_dir=args.input,
                       output_dir=getattr(args, "out", None) or "output",
                       temp_dir=os.path.join(tempfile.gettempdir(), "latentgraph"))


def _primitive_type(workflow: dict | None, node_id: str) -> str | None:
    """The output type of a UI PrimitiveNode (which has no API node of its own), else None."""
    for node in (workflow or {}).get("nodes", []):
        if str(node.get("id")) == node_id and node.get("type") == "PrimitiveNode":
            outputs = node.get("outputs") or [{}]
            return str(outputs[0].get("type") or "*")
    return None


def _typed(raw: str, text: bool) -> Any:
    if text:
        return raw
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def parse_set(item: str, prompt: dict, registry, workflow: dict | None = None) -> tuple[str, str, Any]:
    """'NODE.INPUT=VALUE' → (node, input, value); the value is typed by the input (JSON for numbers/booleans).
    NODE may also be a UI PrimitiveNode, whose input is called `value`."""
    target, sep, raw = item.partition("=")
    node_id, dot, name = target.rpartition(".")
    if not sep or not dot or not node_id or not name:
        raise CLIError(f"--set {item!r}: expected NODE_ID.INPUT=VALUE")
    if node_id not in prompt:
        kind = _primitive_type(workflow, node_id)
        if kind is None:
            raise CLIError(f"--set {item!r}: the workflow has no node {node_id} (nodes: {', '.join(prompt)})")
        if name != "value":
            raise CLIError(f"--set {item!r}: node {node_id} is a PrimitiveNode; set {node_id}.value")
        return node_id, name, _typed(raw, kind in ("STRING", "COMBO"))
    spec = registry.get(prompt[node_id].get("class_type"))
    inp = spec.inputs.get(name) if spec else None
    if spec is not None and inp is None:
        raise CLIError(f"--set {item!r}: {spec.type_name} has no input {name!r} (inputs: {', '.join(spec.inputs)})")
    return node_id, name, _typed(raw, inp is not None and (inp.is_combo or inp.type.name == "STRING"))


def apply_sets(items: list[str], prompt: dict, workflow: dict | None, registry) -> tuple[dict, dict | None]:
    """Apply --set changes. With a UI workflow they are written into its widgets and the workflow is converted
    again, so the workflow embedded in outputs says exactly what ran; a change that is not a widget there
    (a socket, a linked widget) goes into the prompt only, and outputs then embed only the prompt."""
    sets = [parse_set(item, prompt, registry, workflow) for item in items]
    prompt_only = [s for s in sets if workflow is None or not set_ui_widget(workflow, *s, registry)]
    if workflow is not None and len(prompt_only) < len(sets):
        prompt = ui_to_api(workflow, registry)
    for node_id, name, value in prompt_only:
        if node_id not in prompt:
            raise CLIError(f"--set {node_id}.{name}: PrimitiveNode {node_id} has no value to change")
        prompt[node_id].setdefault("inputs", {})[name] = value
    if workflow is not None and prompt_only:
        changed = ", ".join(f"{n}.{i}" for n, i, _ in prompt_only)
        print(f"note: {changed} not widgets of the saved workflow; outputs will embed only the prompt",
              file=sys.stderr)
        workflow = None
    return prompt, workflow


def load(args, registry) -> tuple[dict, dict | None]:
    """The workflow file as (API prompt, UI workflow or None), its nodes migrated to today's versions (each
    migration reported on stderr)."""
    migrated: list[str] = []
    try:
        prompt, workflow = load_prompt(read_workflow(args.workflow), registry, migrated)
    except NewerVersion as exc:
        raise CLIError(f"{args.workflow}: {exc}") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise CLIError(f"{args.workflow}: not a workflow ({exc})") from None
    for line in migrated:
        print(f"migrated: {line}", file=sys.stderr)
    return prompt, workflow


# -- commands ----------------------------------------------------------------------------------------------------

def cmd_validate(args) -> int:
    registry = load_builtin_nodes()
    prompt, _ = load(args, registry)
    report = validate(prompt, registry, environment(args))
    failed = not report.ok or bool(report.node_errors)
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    elif failed:
        print("\n".join(report.lines()), file=sys.stderr)
    else:
        print(f"ok: {len(prompt)} nodes, outputs {', '.join(report.outputs)}")
    return EXIT_INVALID if failed else 0


class _Progress:
    """tqdm bars: one over the graph's nodes, one over the running node's steps."""

    def __init__(self, total: int, prompt: dict, quiet: bool):
        from tqdm import tqdm

        self.tqdm, self.prompt, self.quiet = tqdm, prompt, quiet
        self.nodes = tqdm(total=total, unit="node", file=sys.stderr, disable=quiet, dynamic_ncols=True)
        self.steps = None
        self.running = False

    def cached(self, ids: list[str]) -> None:
        self.nodes.update(len(ids))

    def node_start(self, node_id: str) -> None:
        self._finish_node()
        self.running = True
        self.nodes.set_description(f"#{node_id} {self.prompt[node_id]['class_type']}")

    def progress(self, node_id: str, value: int, total: int, preview: Any) -> None:
        if total <= 1:
            return
        if self.steps is None or self.steps.total != total:
            self._close_steps()
            self.steps = self.tqdm(total=total, unit="step", file=sys.stderr, disable=self.quiet, leave=False,
                                   position=1, dynamic_ncols=True)
        self.steps.update(value - self.steps.n)

    def _finish_node(self) -> None:
        if self.running:
            self.nodes.update(1)
            self.running = False
        self._close_steps()

    def _close_steps(self) -> None:
        if self.steps is not None:
            self.steps.close()
            self.steps = None

    def close(self) -> None:
        self._finish_node()
        self.nodes.close()

    def hooks(self) -> Hooks:
        return Hooks(on_cached=self.cached, on_node_start=self.node_start, on_progress=self.progress)


def cmd_run(args) -> int:
    registry = load_builtin_nodes()
    prompt, workflow = load(args, registry)
    prompt, workflow = apply_sets(args.set or [], prompt, workflow, registry)
    env = environment(args)
    report = validate(prompt, registry, env)
    if not report.ok:
        print("\n".join(report.lines()), file=sys.stderr)
        return EXIT_INVALID
    for line in report.lines():
        print(f"warning: skipped output: {line}", file=sys.stderr)
    os.makedirs(env.output_dir, exist_ok=True)
    extra = {"extra_pnginfo": {"workflow": workflow}} if workflow is not None else {}
    hashes = hash_cache(args)
    if is_png(args.workflow) and not models_match(args, prompt, registry, env, hashes):
        return EXIT_INVALID
    bars = _Progress(len(report.values), prompt, args.quiet)
    interrupt = threading.Event()
    try:
        result = Executor(registry, env, hashes=hashes).run(prompt, report.outputs, prompt_id=str(uuid.uuid4()),
                                                            extra_data=extra, hooks=bars.hooks(), interrupt=interrupt,
                                                            values=report.values)
    except KeyboardInterrupt:
        bars.close()
        print("interrupted", file=sys.stderr)
        return 130
    bars.close()
    if result.status != "success":
        err = result.error
        print(f"node {err['node_id']} ({err['node_type']}) failed: {err.get('exception_message', result.status)}",
              file=sys.stderr)
        return EXIT_INVALID
    for ui in result.outputs.values():
        for image in ui.get("images", []):
            folder = env.output_dir if image.get("type") == "output" else env.temp_dir
            print(os.path.join(folder, image.get("subfolder", ""), image["filename"]))
    print(f"done in {result.seconds:.2f}s: {len(result.executed)} nodes run, {len(result.cached)} cached",
          file=sys.stderr)
    if args.profile:
        print(profile_table(result.profile), file=sys.stderr)
    return 0


def models_match(args, prompt: dict, registry, env: Environment, hashes: HashCache) -> bool:
    """Compare the model files an image's provenance record names with the local ones; say where they differ.
    False stops the run (unless --allow-model-mismatch)."""
    record = png_chunks(args.workflow, "latentgraph").get("latentgraph")
    problems = mismatches(record, registry, env, hashes, prompt)
    for line in problems:
        print(f"{'warning: ' if args.allow_model_mismatch else ''}model mismatch: {line}", file=sys.stderr)
    if problems and not args.allow_model_mismatch:
        print("the image was made with other model files; --allow-model-mismatch runs it anyway", file=sys.stderr)
        return False
    return True


def profile_table(profile: dict[str, dict]) -> str:
    """A run's profile (server/profile.py) as a table, in the order the nodes ran."""
    rows = [("node", "type", "time", "peak memory", "cached", "why it ran")]
    rows += [(node_id, e["class_type"], "" if e["cached"] else f"{e['ms']:.1f} ms", _bytes(e["peak_bytes"]),
              "yes" if e["cached"] else "no", e["why"] or "") for node_id, e in profile.items()]
    ran = [e for e in profile.values() if not e["cached"]]
    kind = next(iter(profile.values()))["memory"] if profile else "rss"
    return "\n".join(columns(rows) + [
        f"{len(ran)} run, {len(profile) - len(ran)} cached, {sum(e['ms'] for e in ran):.1f} ms in nodes; memory: "
        f"{'CUDA peak allocated' if kind == 'cuda' else 'resident-set peak'} added, '-' under 0.1 ms"])


def columns(rows: list[tuple]) -> list[str]:
    """Rows of cells as lines of left-aligned columns."""
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(str(cell).ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]


def _bytes(n: int | None) -> str:
    if n is None:
        return "-"
    size, unit = float(n), "B"
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            break
        size /= 1024
    return f"{n} B" if unit == "B" else f"{size:.1f} {unit}"


def cmd_inspect(args) -> int:
    """What made an image: its graph, node versions, models with their hashes, and seeds."""
    if not is_png(args.image):
        raise CLIError(f"{args.image}: not a PNG")
    registry = load_builtin_nodes()
    chunks = png_chunks(args.image, "prompt", "workflow", "latentgraph")
    prompt, record = chunks.get("prompt"), chunks.get("latentgraph")
    record = record if isinstance(record, dict) else None
    if prompt is None and "workflow" in chunks:
        try:
            prompt, _ = load_prompt(chunks["workflow"], registry)
        except (ValueError, KeyError, TypeError) as exc:
            raise CLIError(f"{args.image}: the 'workflow' chunk is not a workflow ({exc})") from None
    if not isinstance(prompt, dict):
        raise CLIError(f"{args.image}: the image carries no 'workflow' or 'prompt' metadata")
    if args.json:
        print(json.dumps({"latentgraph": record, "prompt": prompt}, indent=2))
    else:
        print("\n".join(describe(args.image, prompt, record, registry)))
    return 0


def describe(name: str, prompt: dict, record: dict | None, registry) -> list[str]:
    """`latentgraph inspect`'s report: a summary line, then tables of nodes, models and seeds."""
    nodes = {i: n for i, n in prompt.items() if isinstance(n, dict) and isinstance(n.get("class_type"), str)}
    specs = {node_id: registry.get(n["class_type"]) for node_id, n in nodes.items()}
    outputs = [f"{i} ({s.type_name})" for i, s in specs.items() if s is not None and s.output_node]
    versions = (record or {}).get("nodes")
    versions = versions if isinstance(versions, dict) else {}
    made = f"made by latentgraph {record.get('version')}" if record else \
        "no provenance record (not made by latentgraph)"
    lines = [f"{name}: {made}", f"graph: {len(nodes)} nodes; outputs: {', '.join(outputs) or 'none'}", "", "nodes"]
    lines += columns([("id", "type", "version", "title")] + [
        (i, n["class_type"], versions.get(n["class_type"], "-"), str((n.get("_meta") or {}).get("title", "")))
        for i, n in nodes.items()])
    recorded = (record or {}).get("models")
    models = [(m.get("node"), m.get("class_type"), m.get("input"), m.get("name"), m.get("autov2") or "-",
               m.get("sha256") or m.get("error", "-"))
              for m in (recorded if isinstance(recorded, list) else []) if isinstance(m, dict)]
    lines += ["", "models"] + (columns([("node", "type", "input", "file", "AutoV2", "sha256")] + models)
                               if models else ["(none recorded)"])
    seeds = []
    for node_id, n in nodes.items():
        inputs = n.get("inputs")
        for input_name, value in (inputs if isinstance(inputs, dict) else {}).items():
            inp = specs[node_id].inputs.get(input_name) if specs[node_id] is not None else None
            if inp is not None and is_seed(inp) and not isinstance(value, list):  # a link is no seed value
                seeds.append((node_id, n["class_type"], input_name, value))
    lines += ["", "seeds"] + (columns([("node", "type", "input", "value")] + seeds) if seeds else ["(none)"])
    return lines


def cmd_nodes(args) -> int:
    registry = load_builtin_nodes()
    env = environment(args)
    if args.json:
        print(json.dumps({name: spec.schema(env) for name, spec in sorted(registry.items())}, indent=2))
        return 0
    for name, spec in sorted(registry.items(), key=lambda kv: (kv[1].category, kv[0])):
        inputs = ", ".join(spec.inputs)
        outputs = ", ".join(o.label for o in spec.outputs) or "(output node)"
        print(f"{spec.category:24} {name:28} ({inputs}) -> {outputs}")
    return 0


def cmd_serve(args) -> int:
    from . import app

    return app.run(args) or 0


def cmd_fetch_canvas(args) -> int:
    from .app import shipped
    from .canvas_lib import NAME, fetch, pinned

    web = Path(args.web) if args.web else shipped("web")
    try:
        where = fetch(web)
    except ValueError as exc:
        raise CLIError(str(exc))
    print(f"{NAME} {pinned(web)[0]} installed in {where}")
    return 0


def cmd_make_demo_model(args) -> int:
    for path in catalog.make_demo_models(args.dir).values():
        print(path)
    beside = os.path.dirname(os.path.abspath(args.dir))
    print(catalog.write_demo_upscaler(args.upscale_models or os.path.join(beside, "upscale_models")))
    print(catalog.write_demo_controlnet(args.controlnet or os.path.join(beside, "controlnet")))
    for path in catalog.write_demo_loras(args.loras or os.path.join(beside, "loras")).values():
        print(path)
    print(catalog.write_demo_clip_vision(args.clip_vision or os.path.join(beside, "clip_vision")))
    return 0


# -- parser ------------------------------------------------------------------------------------------------------

def add_models_argument(p: argparse.ArgumentParser) -> None:
    """--models, for every command that reads models (serve included)."""
    p.add_argument("--models", default=os.environ.get(MODELS_ENV, "models"),
                   help=f"model folder: checkpoints/, vae/, loras/ ... (default: ${MODELS_ENV} or ./models)")


def _folders(p: argparse.ArgumentParser, out: bool = False) -> None:
    add_models_argument(p)
    p.add_argument("--input", default="input", help="folder LoadImage reads from (default: ./input)")
    if out:
        p.add_argument("--out", default="output", help="folder outputs are written to (default: ./output)")
        p.add_argument("--data", default="data", help="folder for the model hash cache (default: ./data, as serve)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="latentgraph", description="Node-graph workflows for latent diffusion.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run a workflow (UI or API JSON, or a PNG with an embedded workflow)")
    p.add_argument("workflow")
    p.add_argument("--set", action="append", metavar="NODE.INPUT=VALUE", help="change an input (repeatable)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    p.add_argument("--profile", action="store_true", help="print each node's time, peak memory and why it ran")
    p.add_argument("--allow-model-mismatch", action="store_true",
                   help="re-run an image even where its recorded model files differ from the local ones")
    _folders(p, out=True)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("inspect", help="what made an image: graph, node versions, models with hashes, seeds")
    p.add_argument("image")
    p.add_argument("--json", action="store_true", help="print the provenance record and the prompt as JSON")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("validate", help="check a workflow without running it (exit 1 on errors)")
    p.add_argument("workflow")
    p.add_argument("--json", action="store_true", help="print the report as JSON (ComfyUI node_errors shape)")
    _folders(p)
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("nodes", help="list the node types")
    p.add_argument("--json", action="store_true", help="print the /object_info schemas")
    _folders(p)
    p.set_defaults(func=cmd_nodes)

    p = sub.add_parser("serve", help="start the HTTP server and canvas")
    try:
        from . import app
    except Exception:  # no server yet, or it fails to import: every other command must still work
        app = None
    if app is not None and hasattr(app, "add_arguments"):
        app.add_arguments(p)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("fetch-canvas", help="download the canvas library from the npm registry, without npm "
                                            "(checked against web/package-lock.json)")
    p.add_argument("--web", metavar="DIR", help="the canvas folder to install it in (default: the one served)")
    p.set_defaults(func=cmd_fetch_canvas)

    p = sub.add_parser("make-demo-model", help="write the tiny demo checkpoints (one set per model family) into DIR, "
                                               "their standalone text encoders, diffusion models alone and VAEs "
                                               "alone into text_encoders, diffusion_models and vae beside DIR and a "
                                               "demo upscale model, ControlNet, LoRAs and CLIP vision model")
    p.add_argument("dir", help="the checkpoints folder, e.g. models/checkpoints")
    p.add_argument("--upscale-models", help="folder for the demo upscale model (default: upscale_models beside DIR)")
    p.add_argument("--controlnet", help="folder for the demo ControlNet (default: controlnet beside DIR)")
    p.add_argument("--loras", help="folder for the demo LoRAs (default: loras beside DIR)")
    p.add_argument("--clip-vision", help="folder for the demo CLIP vision model (default: clip_vision beside DIR)")
    p.set_defaults(func=cmd_make_demo_model)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except CLIError as exc:
        print(f"latentgraph {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ImportError as exc:
        print(f"latentgraph {args.command}: not available yet ({exc})", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        print(f"latentgraph {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":  # `python -m server.cli ...`
    sys.exit(main())
