"""Flatten UI workflows that use subgraphs (schema v1 definitions, nested too) into one plain node/link graph.

ComfyUI's canvas can pack nodes into a *subgraph*: a definition in ``definitions.subgraphs`` (always in the
version-1 layout: links as objects, an input node with id -10 and an output node with id -20), used by *instance*
nodes whose ``type`` is the definition's uuid (comfyui-compat.md §9.3). The backend never sees subgraphs: the
frontend inlines them when it queues. ``flatten`` does the same on the server, producing a graph that the plain
converter (``server.graph.ui_to_api``) reads like any 0.4 file:

- inner nodes get execution ids ``"<instance path>:<inner id>"`` (e.g. ``"10:15:359"`` for node 359 inside
  instance 15 inside instance 10), as ComfyUI reports them in progress and errors;
- each instance input becomes a pass-through ``Reroute`` fed by the outer link, or a ``PrimitiveNode`` holding
  the value of the instance's promoted widget when nothing is linked to it — so the converter's own rules for
  reroutes, primitives, muting and bypass apply unchanged across the boundary;
- each instance output becomes a ``Reroute`` fed by the inner link into the output node;
- an unlinked instance input without a widget value is cut, so the inner node keeps its own widget value;
- a muted (mode 2) or bypassed (mode 4) instance stays a single node: the converter drops it or passes its
  inputs through by type, as the frontend does for any muted or bypassed node.
"""
from __future__ import annotations

from typing import Any

from server.limits import MAX_GRAPH_NODES, TooLarge

INPUT_NODE, OUTPUT_NODE = -10, -20
_KEPT_MODES = (2, 4)  # muted / bypassed instances are not expanded
MAX_DEPTH = 32


class SubgraphError(ValueError):
    """A subgraph definition that cannot be expanded (recursive, or too deeply nested)."""


def definitions(workflow: dict) -> dict[str, dict]:
    holder = workflow.get("definitions")
    subgraphs = holder.get("subgraphs") if isinstance(holder, dict) else None
    if not isinstance(subgraphs, list):
        return {}
    return {s["id"]: s for s in subgraphs if isinstance(s, dict) and isinstance(s.get("id"), str)}


def has_subgraphs(workflow: dict) -> bool:
    defs = definitions(workflow)
    return any(isinstance(n, dict) and n.get("type") in defs for n in workflow.get("nodes") or [])


def flatten(workflow: dict) -> dict:
    """A copy of `workflow` with every active subgraph instance replaced by its (renamed) inner nodes.

    Links come back as objects (the version-1 layout, which the converter reads as well as 0.4 arrays)."""
    defs = definitions(workflow)
    if not has_subgraphs(workflow):
        return workflow
    try:
        nodes, links = _expand(workflow.get("nodes") or [], _link_objects(workflow.get("links") or []), defs, "", (),
                               [MAX_GRAPH_NODES])
    except (KeyError, TypeError, AttributeError) as exc:  # a hand-edited or truncated file
        raise SubgraphError(f"malformed subgraph data ({type(exc).__name__}: {exc})") from None
    flat = {k: v for k, v in workflow.items() if k not in ("nodes", "links", "definitions")}
    flat.update(nodes=nodes, links=links)
    return flat


def _link_objects(links: list) -> list[dict]:
    """Links as v1 objects, whichever layout the file uses."""
    out = []
    for link in links:
        if isinstance(link, dict):
            out.append(dict(link))
        elif isinstance(link, list) and len(link) >= 5:
            out.append({"id": link[0], "origin_id": link[1], "origin_slot": link[2], "target_id": link[3],
                        "target_slot": link[4], "type": link[5] if len(link) > 5 else "*"})
    return out


def _expand(nodes: list, links: list[dict], defs: dict, prefix: str, stack: tuple,
            budget: list[int]) -> tuple[list, list]:
    """Rename one graph level under `prefix` and expand its instances; returns (nodes, links).
    `budget` holds how many more nodes the whole flattening may produce."""
    budget[0] -= len(nodes)
    if budget[0] < 0:  # a few instances nested a few levels deep multiply
        raise TooLarge(f"the subgraphs expand to more than {MAX_GRAPH_NODES} nodes; the server accepts at most that")
    nodes = [_renamed_node(n, prefix) for n in nodes if isinstance(n, dict) and "id" in n]
    links = [_renamed_link(link, prefix) for link in links]
    from_node: dict[str, list[dict]] = {}  # links by origin: an instance redirects its consumers without a scan
    for link in links:
        from_node.setdefault(str(link["origin_id"]), []).append(link)
    out_nodes, out_links = [], list(links)
    for node in nodes:
        definition = defs.get(node.get("type")) if isinstance(node.get("type"), str) else None
        if definition is None or node.get("mode", 0) in _KEPT_MODES:
            out_nodes.append(node)
            continue
        inner_nodes, inner_links = _instance(node, definition, from_node.get(str(node["id"]), []), defs, stack,
                                             budget)
        out_nodes.extend(inner_nodes)
        out_links.extend(inner_links)
    return out_nodes, out_links


def _renamed_node(node: dict, prefix: str) -> dict:
    if not prefix:
        return node
    node = _with_own_sockets(node)
    node["id"] = prefix + str(node["id"])
    for entry in node["inputs"]:
        if isinstance(entry, dict) and entry.get("link") is not None:
            entry["link"] = prefix + str(entry["link"])
    for entry in node["outputs"]:
        if isinstance(entry, dict) and isinstance(entry.get("links"), list):
            entry["links"] = [prefix + str(x) for x in entry["links"]]
    return node


def _with_own_sockets(node: dict) -> dict:
    """A copy of `node` whose inputs and outputs may be changed without touching the original: the only parts
    flattening changes (a deep copy cost most of the time on large files and recursed on deep values)."""
    copied = dict(node)
    for key in ("inputs", "outputs"):
        entries = node.get(key)
        copied[key] = [dict(e) if isinstance(e, dict) else e for e in entries] if isinstance(entries, list) else []
    return copied


def _renamed_link(link: dict, prefix: str) -> dict:
    if not prefix:
        return link
    link = dict(link)
    link["id"] = prefix + str(link["id"])
    for end in ("origin_id", "target_id"):
        if link[end] not in (INPUT_NODE, OUTPUT_NODE):
            link[end] = prefix + str(link[end])
    return link


def _instance(node: dict, definition: dict, consumers: list[dict], defs: dict, stack: tuple,
              budget: list[int]) -> tuple[list, list]:
    """Inline one instance: boundary nodes plus the definition's nodes under ``"<instance id>:"``. `consumers` are
    the outer links from the instance's outputs."""
    sub_id = definition["id"]
    if sub_id in stack:
        raise SubgraphError(f"subgraph {definition.get('name', sub_id)!r} contains itself (node {node['id']})")
    if len(stack) >= MAX_DEPTH:
        raise SubgraphError(f"subgraphs nested deeper than {MAX_DEPTH} levels at node {node['id']}")
    path = str(node["id"])
    inner_prefix = path + ":"
    boundary = _input_boundary(node, definition, path)
    links = _link_objects(definition.get("links") or [])
    cut = {link["id"] for link in links if link["origin_id"] == INPUT_NODE and link["origin_slot"] not in boundary}
    inner_nodes, inner_links = _expand(_without_links(definition.get("nodes") or [], cut),
                                       [link for link in links if link["id"] not in cut],
                                       defs, inner_prefix, stack + (sub_id,), budget)
    # output slot -> boundary Reroute; an output with no inner link (seen in real files) feeds nothing
    outputs = {slot: _reroute(f"{path}:out{slot}", None, out.get("type"))
               for slot, out in enumerate(definition.get("outputs") or []) if isinstance(out, dict)}
    for link in inner_links:
        if link["origin_id"] == INPUT_NODE:
            link.update(origin_id=boundary[link["origin_slot"]], origin_slot=0)
        if link["target_id"] == OUTPUT_NODE:
            reroute = outputs[link["target_slot"]] = _reroute(f"{path}:out{link['target_slot']}", link["id"],
                                                               link.get("type"))
            link.update(target_id=reroute["id"], target_slot=0)
    for link in consumers:  # they now read the output boundary
        if link["origin_slot"] in outputs:
            link.update(origin_id=outputs[link["origin_slot"]]["id"], origin_slot=0)
    return [*boundary.nodes, *outputs.values(), *inner_nodes], inner_links


def _without_links(nodes: list, cut: set) -> list:
    """Nodes whose inputs fed by a cut boundary link become unlinked, so they keep their own widget values."""
    if not cut:
        return nodes
    out = []
    for node in nodes:
        if isinstance(node, dict) and any(isinstance(e, dict) and e.get("link") in cut for e in node.get("inputs") or []):
            node = _with_own_sockets(node)
            for entry in node["inputs"]:
                if isinstance(entry, dict) and entry.get("link") in cut:
                    entry["link"] = None
        out.append(node)
    return out


class _Boundary(dict):
    """input slot -> id of the node that now stands for that instance input; `.nodes` holds those nodes."""

    def __init__(self):
        super().__init__()
        self.nodes: list[dict] = []


def _input_boundary(node: dict, definition: dict, path: str) -> _Boundary:
    boundary = _Boundary()
    sub_inputs = [i for i in definition.get("inputs") or [] if isinstance(i, dict)]
    by_name = {e.get("name"): e for e in node.get("inputs") or [] if isinstance(e, dict)}
    values = _promoted_values(node, definition)
    for slot, sub_input in enumerate(sub_inputs):
        entry = by_name.get(sub_input.get("name")) or {}
        node_id = f"{path}:in{slot}"
        if entry.get("link") is not None:
            boundary.nodes.append(_reroute(node_id, entry["link"], sub_input.get("type")))
        elif slot in values:
            boundary.nodes.append({"id": node_id, "type": "PrimitiveNode", "mode": 0, "inputs": [],
                                   "outputs": [{"name": "value", "type": sub_input.get("type", "*")}],
                                   "widgets_values": [values[slot]]})
        else:
            continue
        boundary[slot] = node_id
    return boundary


def _reroute(node_id: str, link: Any, kind: Any) -> dict:
    return {"id": node_id, "type": "Reroute", "mode": 0,
            "inputs": [{"name": "", "type": kind or "*", "link": link}], "outputs": [{"name": "", "type": kind or "*"}]}


def _promoted_values(node: dict, definition: dict) -> dict[int, Any]:
    """Values of the instance's promoted widgets by definition input slot.

    An instance shows one widget per definition input that feeds an inner widget, in definition order, and saves
    their values positionally in its ``widgets_values``. Files whose count does not match (newer frontends keep
    the values on the inner nodes and list "proxy widgets" instead) yield nothing: the inner values stand."""
    values = node.get("widgets_values")
    if not isinstance(values, list) or not values:
        return {}
    slots = _widget_slots(definition)
    if len(slots) != len(values):
        return {}
    return dict(zip(slots, values))


def _widget_slots(definition: dict) -> list[int]:
    """Definition input slots whose inner targets are widgets (inputs carrying a ``widget`` entry)."""
    widget_links = set()
    for inner in definition.get("nodes") or []:
        for entry in inner.get("inputs") or []:
            if isinstance(entry, dict) and entry.get("widget") and entry.get("link") is not None:
                widget_links.add(entry["link"])
    slots = []
    for slot, sub_input in enumerate(definition.get("inputs") or []):
        if any(link in widget_links for link in sub_input.get("linkIds") or []):
            slots.append(slot)
    return slots
