"""Node versions in saved workflows: read the version each node was saved with, refuse one newer than this
server's node, and bring older ones up to date through the node's ``Migration`` steps, in the UI and the API
format alike. ``graph.load_prompt`` calls this before converting, so the CLI, HTTP and the canvas agree.

The version lives in a UI node's ``properties.ver`` and an API node's ``_meta.ver`` (where ComfyUI's frontend
writes them). A ``ver`` beside a ``cnr_id`` or ``aux_id`` is the release of the node pack that wrote the file
(ComfyUI writes "comfy-core" and its own version), not this node's: such a node, like one without a ``ver``, is
read as first published. Once loaded, every other known node records its current version.
"""
from __future__ import annotations

from typing import Any

from nodes.node import Migration, NodeSpec, parse_version

from . import graph, subgraphs  # graph as a module: graph.load_prompt imports this one


class NewerVersion(ValueError):
    """The workflow was saved with node versions this server does not know yet."""


def migrate_ui(workflow: dict, registry: dict[str, NodeSpec]) -> list[str]:
    """Bring a UI workflow's nodes (subgraph definitions' included) to the current versions, in place; one line
    per migrated node saying what changed."""
    nodes = list(workflow.get("nodes") or [])
    for sub in subgraphs.definitions(workflow).values():  # malformed ones are left for flattening to name
        if isinstance(sub.get("nodes"), list):
            nodes += sub["nodes"]
    return _migrate([(n.get("id"), n, registry[n["type"]]) for n in nodes
                     if isinstance(n, dict) and isinstance(n.get("type"), str) and n["type"] in registry],
                    "properties", _migrate_ui_node)


def migrate_api(prompt: dict, registry: dict[str, NodeSpec]) -> list[str]:
    """The same for an API prompt: inputs are renamed, added and mapped by name, in place."""
    return _migrate([(node_id, n, registry[n["class_type"]]) for node_id, n in prompt.items()
                     if isinstance(n, dict) and isinstance(n.get("class_type"), str) and n["class_type"] in registry],
                    "_meta", _migrate_api_node)


def saved_version(meta: Any) -> str | None:
    """The node version a `properties` / `_meta` dict records; None when it records none of ours."""
    if not isinstance(meta, dict) or meta.get("cnr_id") or meta.get("aux_id"):
        return None
    return meta.get("ver")


def _migrate(known: list[tuple[Any, dict, NodeSpec]], key: str, migrate_node) -> list[str]:
    """Migrate and stamp the known nodes (id, node, spec) whose node[key] does not record today's version."""
    todo = [(node_id, node, spec) for node_id, node, spec in known if saved_version(node.get(key)) != spec.version]
    plans = _plan(todo, key)
    report = []
    for (node_id, node, spec), steps in zip(todo, plans):
        changes = migrate_node(node, spec, steps) if steps else []
        if changes:
            report.append(_line(node_id, spec, node.get(key), changes))
        _stamp(node, key, spec)
    return report


def _plan(nodes: list[tuple[Any, dict, NodeSpec]], key: str) -> list[list[Migration]]:
    """The steps each node needs, in order. Every node saved newer than known is refused at once, by id and type;
    an unreadable version too."""
    plans, newer = [], []
    for node_id, node, spec in nodes:
        saved = saved_version(node.get(key))
        try:
            if saved is not None and parse_version(saved) > parse_version(spec.version):
                newer.append(f"node {node_id} ({spec.type_name}) was saved with version {saved}; "
                             f"this latentgraph has {spec.version}")
                continue
            plans.append(spec.steps_since(saved))
        except ValueError as exc:
            raise ValueError(f"node {node_id} ({spec.type_name}): {key}.ver {exc}") from None
    if newer:
        raise NewerVersion("the workflow needs newer nodes than this server has (update latentgraph to run it): "
                           + "; ".join(newer))
    return plans


def _migrate_api_node(node: dict, spec: NodeSpec, steps: list[Migration]) -> list[str]:
    inputs = node.get("inputs")
    return [c for step in steps for c in step.apply(inputs)] if isinstance(inputs, dict) else []


def _migrate_ui_node(node: dict, spec: NodeSpec, steps: list[Migration]) -> list[str]:
    """Widget values move from the layout the node was saved in to today's; links follow renamed inputs."""
    values = node.get("widgets_values")
    if isinstance(values, dict):
        changes = [c for step in steps for c in step.apply(values)]
    else:
        values = values if isinstance(values, list) else []
        taken, controls, uploads, index = {}, {}, [], 0
        for name, _, extras in graph.widget_layout(spec, steps):
            if index < len(values):
                taken[name] = values[index]
            for kind, value in zip(extras, values[index + 1:index + 1 + len(extras)]):
                if kind == "control":
                    controls[_forward(name, steps)] = value
                else:
                    uploads.append(value)
            index += 1 + len(extras)
        changes = [c for step in steps for c in step.apply(taken)]
        rebuilt = []
        for name, inp, extras in graph.widget_layout(spec):
            rebuilt.append(taken[name] if name in taken else inp.default if inp.has_default else None)
            for kind in extras:  # new ones get a fixed seed and the upload button's usual value
                rebuilt.append(controls.get(name, "fixed") if kind == "control" else
                               uploads.pop(0) if uploads else "image")
        node["widgets_values"] = rebuilt
    for entry in node.get("inputs") or []:
        if isinstance(entry, dict):
            entry["name"] = _forward(entry.get("name"), steps)
            if isinstance(entry.get("widget"), dict):
                entry["widget"]["name"] = _forward(entry["widget"].get("name"), steps)
    return changes


def _forward(name: Any, steps: list[Migration]) -> Any:
    """An input's name after the steps' renames."""
    for step in steps:
        name = step.renamed.get(name, name)
    return name


def _stamp(node: dict, key: str, spec: NodeSpec) -> None:
    """Record the node's current version in node[key], unless that holds another node pack's record (which
    stays as the file has it: such a node is read as first published again next time, and every step is
    harmless on inputs already migrated)."""
    meta = node.get(key)
    if not isinstance(meta, dict):
        node[key] = {"ver": spec.version}
    elif not (meta.get("cnr_id") or meta.get("aux_id")):
        meta["ver"] = spec.version


def _line(node_id: Any, spec: NodeSpec, meta: Any, changes: list[str]) -> str:
    saved = saved_version(meta) or "first published"
    return f"node {node_id} ({spec.type_name}) {saved} → {spec.version}: " + "; ".join(changes)
