"""Workflow graphs: read the API and UI formats, convert UI→API, validate before anything runs.

Two formats exist (see the ComfyUI compatibility reference, §9). The API ("prompt") format is what runs:
``{id: {"class_type", "inputs": {name: constant | [source_id, slot]}}}``. The UI format is the canvas's
save file (nodes with positional ``widgets_values``, a links table, Reroutes, PrimitiveNodes, muted and
bypassed nodes); ``ui_to_api`` turns it into a prompt here on the server, so the CLI and HTTP clients can run
saved workflows directly.

Validation reports every problem at once, each naming node id, class and input, with ComfyUI's error type
names so existing clients show them."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from nodes.node import Environment, InputError, NodeSpec
from nodes.types import INT, compatible
from server.limits import MAX_GRAPH_LINKS, MAX_GRAPH_NODES, TooLarge
from server.missing import explain as explain_missing
from server.subgraphs import flatten as flatten_subgraphs

# -- UI → API ----------------------------------------------------------------------------------------------------

FRONTEND_ONLY = {"Note", "MarkdownNote"}  # canvas decorations without a backend class
MODE_MUTED, MODE_BYPASS = 2, 4
_SEED_NAMES = ("seed", "noise_seed")  # get a control widget even when the spec does not say so
LISTED = 20  # node ids listed in a cycle's message, outputs in an error's dependent_outputs


def is_ui_workflow(data: Any) -> bool:
    """True for a canvas save file (nodes list + links table), False for an API prompt."""
    return isinstance(data, dict) and isinstance(data.get("nodes"), list) and "links" in data


@dataclass(frozen=True)
class _Link:
    origin: str
    origin_slot: int
    target: str
    target_slot: int
    type: str


_LINK_KEYS = ("id", "origin_id", "origin_slot", "target_id", "target_slot")


def _is_id(value: Any) -> bool:
    return isinstance(value, (int, str)) and not isinstance(value, bool)


def check_ui_shape(workflow: dict) -> None:
    """Refuse a UI workflow whose nodes or links are not shaped as the format says, naming the first bad
    entry (ValueError), so conversion never trips over it half-way; or one too large (TooLarge)."""
    for key, limit in (("nodes", MAX_GRAPH_NODES), ("links", MAX_GRAPH_LINKS)):
        entries = workflow.get(key)
        if isinstance(entries, list) and len(entries) > limit:
            raise TooLarge(f"the workflow has {len(entries)} {key}; the server accepts at most {limit}")
    for i, node in enumerate(workflow["nodes"]):
        if not isinstance(node, dict) or not _is_id(node.get("id")) or not isinstance(node.get("type"), str):
            raise ValueError(f"workflow node #{i} needs an 'id' and a 'type' string: {str(node)[:120]}")
        for key in ("inputs", "outputs"):
            entries = node.get(key)
            if entries is not None and not (isinstance(entries, list) and all(isinstance(e, dict) for e in entries)):
                raise ValueError(f"workflow node {node['id']} ({node['type']}): '{key}' must be a list of objects")
        if not isinstance(node.get("widgets_values"), (list, dict, type(None))):
            raise ValueError(f"workflow node {node['id']} ({node['type']}): 'widgets_values' must be a list")
        if not all(_is_id(e.get("link")) or e.get("link") is None for e in node.get("inputs") or []):
            raise ValueError(f"workflow node {node['id']} ({node['type']}): an input's 'link' must be a link id")
    links = workflow.get("links") or []
    if not isinstance(links, list):
        raise ValueError("workflow 'links' must be a list")
    for link in links:
        fields = [link.get(k) for k in _LINK_KEYS] if isinstance(link, dict) else link
        if not (isinstance(fields, list) and len(fields) >= 5 and all(_is_id(f) for f in fields[:5])
                and all(isinstance(f, int) and not isinstance(f, bool) for f in (fields[2], fields[4]))):
            raise ValueError(f"workflow link {str(link)[:120]} is not [id, origin_id, origin_slot, target_id, "
                             "target_slot, type]")


def _link_table(workflow: dict) -> dict[Any, _Link]:
    """Links by id; 0.4 files store arrays, version 1 files objects."""
    table = {}
    for link in workflow.get("links") or []:
        if isinstance(link, dict):
            table[link["id"]] = _Link(str(link["origin_id"]), link["origin_slot"], str(link["target_id"]),
                                      link["target_slot"], str(link.get("type", "*")))
        elif isinstance(link, list) and len(link) >= 5:
            table[link[0]] = _Link(str(link[1]), link[2], str(link[3]), link[4],
                                   str(link[5]) if len(link) > 5 else "*")
    return table


def widget_slots(spec: NodeSpec) -> dict[str, int]:
    """Where each widget input's value sits in a node's positional ``widgets_values``.

    Widgets come in schema order (required, then optional); a seed's "control after generate" value follows its
    widget, and an image upload button's value follows the required widgets (LoadImageMask saves
    ``["m.png", "red", "image"]``); those values belong to no input."""
    slots, index = {}, 0
    for group in ([i for i in spec.inputs.values() if i.required], [i for i in spec.inputs.values() if i.optional]):
        for inp in group:
            if not inp.is_widget:
                continue
            slots[inp.name] = index
            index += 1
            if inp.control_after_generate or (inp.type == INT and inp.name in _SEED_NAMES):
                index += 1
        index += any(inp.image_upload and inp.is_widget for inp in group)
    return slots


def _widget_inputs(node: dict, spec: NodeSpec | None) -> dict[str, Any]:
    """Constant inputs from a node's widgets_values (a list, or rarely a dict keyed by name)."""
    values = node.get("widgets_values")
    if spec is None or values is None:
        return {}
    out = {}
    if isinstance(values, dict):
        for name, inp in spec.inputs.items():
            if inp.is_widget and name in values:
                out[name] = values[name]
        return out
    for name, index in widget_slots(spec).items():
        if index < len(values):
            out[name] = values[index]
        elif spec.inputs[name].has_default:  # older file, newer node: the canvas would show the default
            out[name] = spec.inputs[name].default
    return out


class _UIGraph:
    """Lookup tables for one UI workflow and the link-following rules of §9.6."""

    def __init__(self, workflow: dict):
        self.nodes = {str(n["id"]): n for n in workflow["nodes"] if isinstance(n, dict) and "id" in n}
        self.links = _link_table(workflow)

    def resolve(self, link_id: Any, want_type: str) -> tuple | None:
        """Follow a link to what really feeds it: ``("link", id, slot)``, ``("value", v)`` or None (dropped).

        Reroutes are walked through, PrimitiveNodes yield their value, muted origins drop the input and
        bypassed origins pass one of their own inputs through."""
        seen = set()
        while link_id is not None and link_id not in seen:
            seen.add(link_id)
            link = self.links.get(link_id)
            if link is None:
                return None
            origin = self.nodes.get(link.origin)
            if origin is None:  # dangling: keep it so validation names the missing node
                return ("link", link.origin, link.origin_slot)
            kind, mode = origin.get("type"), origin.get("mode", 0)
            if kind == "Reroute":
                link_id = _first_input_link(origin)
            elif kind == "PrimitiveNode":
                values = origin.get("widgets_values") or []
                return ("value", values[0]) if values else None
            elif mode == MODE_MUTED:
                return None
            elif mode == MODE_BYPASS:
                link_id = _bypass_source(origin, link.origin_slot, want_type if want_type != "*" else link.type)
            else:
                return ("link", link.origin, link.origin_slot)
        return None


def _first_input_link(node: dict) -> Any:
    inputs = node.get("inputs") or []
    return inputs[0].get("link") if inputs else None


def _bypass_source(node: dict, slot: int, want_type: str) -> Any:
    """A bypassed node hands output k's consumers its input k when the types match, else its first input of
    the consumer's type."""
    inputs = [i for i in node.get("inputs") or [] if isinstance(i, dict)]
    if slot < len(inputs) and inputs[slot].get("type") == want_type and inputs[slot].get("link") is not None:
        return inputs[slot]["link"]
    for inp in inputs:
        if inp.get("type") == want_type and inp.get("link") is not None:
            return inp["link"]
    return None


def _skipped(node: dict) -> bool:
    return node.get("type") in FRONTEND_ONLY or node.get("type") in ("Reroute", "PrimitiveNode") \
        or node.get("mode", 0) in (MODE_MUTED, MODE_BYPASS)


def _convert_node(node: dict, graph: _UIGraph, registry: dict[str, NodeSpec]) -> dict:
    kind = node.get("type")
    spec = registry.get(kind)
    inputs = _widget_inputs(node, spec)
    for entry in node.get("inputs") or []:
        if not isinstance(entry, dict) or entry.get("link") is None:
            continue
        name = _input_name(entry)
        source = graph.resolve(entry["link"], str(entry.get("type", "*")))
        if source is None:
            inputs.pop(name, None)  # origin muted or gone: the input is simply not set
        elif source[0] == "value":
            inputs[name] = source[1]
        else:
            inputs[name] = [source[1], source[2]]  # a converted widget's link wins over its stale value
    for name, value in inputs.items():
        if isinstance(value, list) and not _is_api_link(value):
            inputs[name] = {"__value__": value}
    title = node.get("title") or (spec.display_name if spec else kind)
    return {"class_type": kind, "inputs": inputs, "_meta": {"title": title}}


def _input_name(entry: dict) -> Any:
    """The input a UI socket feeds: its converted widget's name, else its own."""
    widget = entry.get("widget")
    return (widget.get("name") if isinstance(widget, dict) else None) or entry.get("name")


def _is_api_link(value: list) -> bool:
    return len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], int)


def ui_to_api(workflow: dict, registry: dict[str, NodeSpec]) -> dict:
    """Convert a UI workflow (format 0.4) to an API prompt, as the canvas does before queueing it.

    Unknown node types are kept (without widget values) so that validation reports them by id."""
    check_ui_shape(workflow)
    workflow = flatten_subgraphs(workflow)  # schema v1 subgraphs → plain nodes (server/subgraphs.py)
    graph = _UIGraph(workflow)
    prompt = {}
    for node_id, node in graph.nodes.items():
        if not _skipped(node):
            prompt[node_id] = _convert_node(node, graph, registry)
    return prompt


def set_ui_widget(workflow: dict, node_id: str, name: str, value: Any, registry: dict[str, NodeSpec]) -> bool:
    """Write a widget value into a UI workflow (then convert it again); False when `name` is not a widget of
    that node that decides its value — a socket, or a converted widget whose link wins. A PrimitiveNode's
    widget is called ``value``."""
    node = next((n for n in workflow.get("nodes", []) if str(n.get("id")) == str(node_id)), None)
    values = node.get("widgets_values") if node else None
    if node is None or not isinstance(values, (list, dict)):
        return False
    if node.get("type") == "PrimitiveNode":
        if name != "value" or not isinstance(values, list) or not values:
            return False
        values[0] = value
        return True
    spec = registry.get(node.get("type"))
    linked = any(isinstance(i, dict) and i.get("link") is not None and _input_name(i) == name
                 for i in node.get("inputs") or [])
    if spec is None or linked:
        return False
    if isinstance(values, dict):
        values[name] = value
        return True
    index = widget_slots(spec).get(name)
    if index is None or index >= len(values):
        return False
    values[index] = value
    return True


# -- reading files -----------------------------------------------------------------------------------------------

def load_prompt(data: Any, registry: dict[str, NodeSpec]) -> tuple[dict, dict | None]:
    """Any accepted workflow JSON → (API prompt, UI workflow or None).

    Accepts a UI workflow, an API prompt, or a ``POST /prompt`` body (``{"prompt", "extra_data"}``)."""
    if is_ui_workflow(data):
        return ui_to_api(data, registry), data
    if not isinstance(data, dict):
        raise ValueError(f"a workflow must be a JSON object, not {type(data).__name__}")
    if is_serverless_envelope(data):
        raise ValueError('this is a serverless request envelope {"input": {"workflow": …}}, not a workflow: send '
                         'the value of input.workflow itself (as the prompt)')
    body = data.get("prompt")
    if isinstance(body, dict) and "class_type" not in body:
        workflow = ((data.get("extra_data") or {}).get("extra_pnginfo") or {}).get("workflow")
        if is_ui_workflow(body):
            return ui_to_api(body, registry), body
        return body, workflow if is_ui_workflow(workflow) else None
    return data, None


def is_serverless_envelope(data: Any) -> bool:
    """``{"input": {"workflow": …}}``, the request body of serverless ComfyUI workers (RunPod's worker-comfyui and
    its kin); its "input" is no node, so read as a prompt it would only give puzzling node errors."""
    return isinstance(data, dict) and isinstance(data.get("input"), dict) and "workflow" in data["input"] \
        and "class_type" not in data["input"]


def read_png_workflow(path: str) -> dict:
    """The workflow embedded in a PNG: the `workflow` text chunk (UI JSON), else `prompt` (API JSON)."""
    try:
        with Image.open(path) as img:
            text = dict(getattr(img, "text", None) or {})  # PIL reads tEXt, zTXt and iTXt alike
    except (OSError, SyntaxError) as exc:
        raise ValueError(f"{path}: not a readable image ({exc})") from None
    for key in ("workflow", "prompt"):
        if key in text:
            try:
                return json.loads(text[key])
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}: the '{key}' chunk is not valid JSON ({exc})") from None
    raise ValueError(f"{path}: the image carries no 'workflow' or 'prompt' metadata")


# -- validation --------------------------------------------------------------------------------------------------

@dataclass
class Validation:
    """What validate() found. ``ok`` means at least one output can run (ComfyUI runs the valid outputs even
    when others failed); ``node_errors`` then still lists what was dropped."""

    ok: bool
    error: dict | None
    node_errors: dict = field(default_factory=dict)
    outputs: list[str] = field(default_factory=list)
    values: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"ok": self.ok, "error": self.error, "node_errors": self.node_errors, "outputs": self.outputs}

    def lines(self) -> list[str]:
        """One readable line per problem (for terminals and logs)."""
        out = []
        for node_id, entry in self.node_errors.items():
            for err in entry["errors"]:
                name = err["extra_info"].get("input_name")
                where = f"node {node_id} ({entry['class_type']})" + (f" input '{name}'" if name else "")
                out.append(f"{where}: {err['message']} [{err['type']}]")
        if self.error and not out:
            out.append(f"{self.error['message']} [{self.error['type']}]")
        return out


def is_link(value: Any) -> bool:
    """An API-format link: exactly ``[node_id, output_slot]``."""
    return (isinstance(value, list) and len(value) == 2 and isinstance(value[0], (str, int))
            and not isinstance(value[0], bool) and isinstance(value[1], int) and not isinstance(value[1], bool))


def _error(kind: str, message: str, details: str = "", **extra) -> dict:
    return {"type": kind, "message": message, "details": details, "extra_info": extra}


class _Checker:
    """One validation pass; collects errors per node instead of stopping at the first."""

    def __init__(self, prompt: dict, registry: dict[str, NodeSpec], env: Environment):
        self.prompt, self.registry, self.env = prompt, registry, env
        self.node_errors: dict[str, dict] = {}
        self.values: dict[str, dict] = {}
        self.specs: dict[str, NodeSpec] = {}
        self._links: dict[str, list[tuple[str, str]]] = {}

    def add(self, node_id: str, err: dict) -> None:
        node = self.prompt.get(node_id)
        class_type = node.get("class_type") if isinstance(node, dict) else None
        entry = self.node_errors.setdefault(node_id, {"errors": [], "dependent_outputs": [], "class_type": class_type})
        err["details"] = err["details"] or f"node {node_id} ({class_type})" + (
            f" input '{err['extra_info']['input_name']}'" if err["extra_info"].get("input_name") else "")
        entry["errors"].append(err)

    def check_classes(self) -> None:
        for node_id, node in self.prompt.items():
            if not isinstance(node, dict) or not isinstance(node.get("class_type"), str):
                self.add(node_id, _error("invalid_prompt", f"Node {node_id} has no class_type string",
                                         input_name=None))
            elif node["class_type"] not in self.registry:
                self.add(node_id, _error("invalid_prompt", f"Node type {node['class_type']!r} does not exist",
                                         input_name=None))
            else:
                self.specs[node_id] = self.registry[node["class_type"]]

    def links_of(self, node_id: str) -> list[tuple[str, str]]:
        """(input name, source id) for the node's link-shaped inputs that point at existing nodes (memoised:
        the ancestor walk and the cycle search both ask)."""
        found = self._links.get(node_id)
        if found is None:
            node = self.prompt.get(node_id)
            inputs = node.get("inputs") if isinstance(node, dict) else None
            found = [] if not isinstance(inputs, dict) else [
                (name, str(v[0])) for name, v in inputs.items()
                if isinstance(v, list) and is_link(v) and str(v[0]) in self.prompt]  # most inputs are constants
            self._links[node_id] = found
        return found

    def check_inputs(self, node_id: str) -> None:
        spec = self.specs.get(node_id)
        if spec is None:
            return
        inputs = self.prompt[node_id].get("inputs")
        if not isinstance(inputs, dict):
            inputs = {}
        consts = self.values[node_id] = {}
        for name, inp in spec.inputs.items():
            if name not in inputs:
                if inp.required:
                    self.add(node_id, _error("required_input_missing", f"Required input is missing: {name}",
                                             input_name=name, input_config=inp.spec(self.env)))
                continue
            value = inputs[name]
            if isinstance(value, list):
                self.check_link(node_id, name, inp, value)
                continue
            if isinstance(value, dict) and "__value__" in value:
                value = value["__value__"]
            try:
                consts[name] = inp.coerce(value, self.env)
            except InputError as exc:
                self.add(node_id, _error(exc.kind, exc.message, exc.details, input_name=name,
                                         input_config=inp.spec(self.env), received_value=value))

    def check_link(self, node_id: str, name: str, inp, value: list) -> None:
        if not is_link(value):
            self.add(node_id, _error("bad_linked_input", f"Bad linked input, must be [node_id, slot_index]: {name}",
                                     input_name=name, received_value=value))
            return
        source, slot = str(value[0]), value[1]
        if source not in self.prompt:
            self.add(node_id, _error("bad_linked_input", f"Input {name} links to node {source}, which does not exist",
                                     input_name=name, linked_node=[source, slot]))
            return
        source_spec = self.specs.get(source)
        if source_spec is None:
            return  # the source itself is reported
        if not 0 <= slot < len(source_spec.outputs):
            self.add(node_id, _error("bad_linked_input",
                                     f"Input {name} links to output {slot} of node {source} ({source_spec.type_name}),"
                                     f" which has {len(source_spec.outputs)} outputs",
                                     input_name=name, linked_node=[source, slot]))
            return
        received = source_spec.outputs[slot].type.name
        accepted = inp.type.name
        if inp.is_combo and received in ("COMBO", "STRING"):
            return
        if not compatible(received, accepted):
            self.add(node_id, _error("return_type_mismatch", "Return type mismatch between linked nodes",
                                     f"node {node_id} ({self.specs[node_id].type_name}) input '{name}':"
                                     f" received_type({received}) mismatch input_type({accepted})",
                                     input_name=name, received_type=received, linked_node=[source, slot]))


def _ancestors(roots: list[str], links_of) -> set[str]:
    """Every node the roots depend on, themselves included (iterative: chains can be thousands of nodes long)."""
    seen, stack = set(roots), list(roots)
    while stack:
        for _, source in links_of(stack.pop()):
            if source not in seen:
                seen.add(source)
                stack.append(source)
    return seen


def _components(nodes: set[str], links_of) -> list[list[str]]:
    """The strongly connected components of the nodes' dependency graph, each listed after every component it
    depends on (Tarjan's algorithm, iterative). A component of more than one node, or one feeding itself, is a
    cycle."""
    index, low, on_stack, stack, found = {}, {}, set(), [], []
    counter = 0
    for start in sorted(nodes):
        if start in index:
            continue
        work = [(start, iter([s for _, s in links_of(start) if s in nodes]))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter([s for _, s in links_of(child) if s in nodes])))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                found.append(sorted(component, key=_id_order))
    return found


def _dependents(components: list[list[str]], targets: list[str], links_of) -> dict[str, int]:
    """For every node, the outputs that depend on it, as a bit mask over `targets`. One pass from the outputs
    towards the sources (components in reverse order: consumers first), so it stays linear in the graph however
    many outputs share its nodes; a walk per output was quadratic."""
    mask = {node: 0 for component in components for node in component}
    for i, target in enumerate(targets):
        mask[target] |= 1 << i
    for component in reversed(components):
        shared = 0
        for node in component:
            shared |= mask[node]
        for node in component:
            mask[node] = shared
            for _, source in links_of(node):
                mask[source] |= shared
    return mask


def _first_bits(mask: int, limit: int) -> list[int]:
    """The positions of the lowest `limit` set bits of `mask`."""
    out = []
    while mask and len(out) < limit:
        low = mask & -mask
        out.append(low.bit_length() - 1)
        mask ^= low
    return out


def _id_order(node_id: str):
    return (0, int(node_id), "") if node_id.isdigit() else (1, 0, node_id)


def validate(prompt: Any, registry: dict[str, NodeSpec], env: Environment | None = None,
             outputs: list[str] | None = None) -> Validation:
    """Check a prompt before running it; every problem found is reported (see the module docstring).
    Missing node types and model files get their own error types (server/missing.py)."""
    env = env or Environment()
    return explain_missing(_validate(prompt, registry, env, outputs), prompt, registry, env)


def _validate(prompt: Any, registry: dict[str, NodeSpec], env: Environment,
              outputs: list[str] | None) -> Validation:
    if not isinstance(prompt, dict):
        return Validation(False, _error("invalid_prompt", "The prompt must be a JSON object of nodes"))
    if len(prompt) > MAX_GRAPH_NODES:
        return Validation(False, _error("prompt_too_large", f"The prompt has {len(prompt)} nodes; the server accepts "
                                                            f"at most {MAX_GRAPH_NODES}"))
    check = _Checker(prompt, registry, env)
    check.check_classes()
    unknown = dict(check.node_errors)

    if outputs is None:
        targets = [n for n, spec in check.specs.items() if spec.output_node]
    else:
        targets = [str(o) for o in outputs]
        missing = [o for o in targets if o not in prompt]
        if missing:
            return Validation(False, _error("invalid_prompt", f"Requested outputs do not exist: {', '.join(missing)}"),
                              unknown)
    if not targets:
        return Validation(False, _error("prompt_no_outputs", "Prompt has no outputs",
                                        "add an output node such as SaveImage or PreviewImage"), unknown)

    targets = list(dict.fromkeys(targets))
    reachable = _ancestors(targets, check.links_of)
    for node_id in prompt:
        if node_id in reachable:
            check.check_inputs(node_id)
    components = _components(reachable, check.links_of)
    for cycle in components:
        first = cycle[0]
        members = set(cycle)
        into = [n for n, s in check.links_of(first) if s in members]
        if len(cycle) > 1 or into:  # one error per cycle, its node list capped: the cycle may be thousands long
            listed = ", ".join(cycle[:LISTED]) + (f" and {len(cycle) - LISTED} more" if len(cycle) > LISTED else "")
            check.add(first, _error("dependency_cycle", f"Dependency cycle through nodes {listed}",
                                    input_name=into[0], cycle=cycle[:LISTED], cycle_length=len(cycle)))

    masks = _dependents(components, targets, check.links_of)
    failed = 0  # outputs that depend on a node with an error
    for node_id, entry in check.node_errors.items():
        depends = masks.get(node_id, 0)
        failed |= depends
        entry["dependent_outputs"] = [targets[i] for i in _first_bits(depends, LISTED)]
    valid = [t for i, t in enumerate(targets) if not failed >> i & 1]
    wanted = ((1 << len(targets)) - 1) & ~failed
    error = None
    if unknown:
        kinds = sorted({str(prompt[n].get("class_type")) for n in unknown if isinstance(prompt[n], dict)})
        error = _error("invalid_prompt", f"Cannot execute because node types do not exist: {', '.join(kinds)}"
                       if kinds else "Cannot execute: nodes without class_type", "; ".join(
                           f"node {n}" for n in unknown))
    elif not valid:
        error = _error("prompt_outputs_failed_validation", "Prompt outputs failed validation",
                       "\n".join(Validation(False, None, check.node_errors).lines()))
    values = {n: v for n, v in check.values.items() if masks.get(n, 0) & wanted} if valid else {}
    return Validation(error is None, error, check.node_errors, valid if error is None else [], values)
