"""The `latentgraph` command: run, validate and list nodes headless; start the server; make the demo model; fetch
the canvas library without npm.

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
from .graph import load_prompt, read_png_workflow, set_ui_widget, ui_to_api, validate

EXIT_INVALID = 1   # the graph is invalid or a node failed
EXIT_USAGE = 2     # the file could not be read, or arguments are wrong
MODELS_ENV = "LATENTGRAPH_MODELS"


class CLIError(Exception):
    """A user-facing problem; printed without a traceback."""


# -- shared steps ------------------------------------------------------------------------------------------------

def read_workflow(path: str) -> Any:
    """JSON from a .json file, or the workflow embedded in a PNG."""
    if not os.path.isfile(path):
        raise CLIError(f"{path}: no such file")
    with open(path, "rb") as f:
        head = f.read(8)
    if head.startswith(b"\x89PNG"):
        try:
            return read_png_workflow(path)
        except ValueError as exc:
            raise CLIError(str(exc)) from None
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CLIError(f"{path}: not valid JSON ({exc})") from None


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
    try:
        prompt, workflow = load_prompt(read_workflow(args.workflow), registry)
    except (ValueError, KeyError, TypeError) as exc:
        raise CLIError(f"{args.workflow}: not a workflow ({exc})") from None
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
    bars = _Progress(len(report.values), prompt, args.quiet)
    interrupt = threading.Event()
    try:
        result = Executor(registry, env).run(prompt, report.outputs, prompt_id=str(uuid.uuid4()), extra_data=extra,
                                             hooks=bars.hooks(), interrupt=interrupt, values=report.values)
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
    return 0


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
    folder = args.upscale_models or os.path.join(os.path.dirname(os.path.abspath(args.dir)), "upscale_models")
    print(catalog.write_demo_upscaler(folder))
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="latentgraph", description="Node-graph workflows for latent diffusion.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run a workflow (UI or API JSON, or a PNG with an embedded workflow)")
    p.add_argument("workflow")
    p.add_argument("--set", action="append", metavar="NODE.INPUT=VALUE", help="change an input (repeatable)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    _folders(p, out=True)
    p.set_defaults(func=cmd_run)

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
                                               "their standalone text encoders into text_encoders beside DIR and a "
                                               "demo upscale model")
    p.add_argument("dir", help="the checkpoints folder, e.g. models/checkpoints")
    p.add_argument("--upscale-models", help="folder for the demo upscale model (default: upscale_models beside DIR)")
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
