"""Say plainly what a shared workflow lacks: node types we do not have, and model files not installed.

ComfyUI reports a missing node type as a generic ``invalid_prompt`` and a missing model as ``value_not_in_list``
on a combo (comfyui-compat.md §16). ``explain`` rewrites a validation result so that

- every node of an unknown class gets a ``missing_node_type`` error that says whether the class is one of ComfyUI's
  built-in nodes latentgraph does not implement, or a custom node that is not installed; the top-level error
  lists each missing class with the node ids that use it (``extra_info.missing_node_types = {class: [ids]}``,
  the built-in ones again in ``extra_info.not_implemented``) and any missing model files with them;
- a model-file combo (``ckpt_name``, ``vae_name`` …) whose file is absent gets a ``missing_model`` error naming
  the file and the folder it is expected in — and, when nodes/ knows an installed file that could stand in for it
  (``nodes.catalog.substitute``), naming that one.
"""
from __future__ import annotations

import functools
import json
import os
from typing import Any

from nodes.catalog import INPUT_FOLDERS, substitute
from nodes.node import Environment, NodeSpec

LEGACY_GROUP_PREFIXES = ("workflow>", "workflow/")


@functools.cache
def comfyui_builtin_nodes() -> frozenset[str]:
    """ComfyUI's own node classes (server/comfyui_builtin_nodes.json says where the list comes from)."""
    with open(os.path.join(os.path.dirname(__file__), "comfyui_builtin_nodes.json"), encoding="utf-8") as f:
        return frozenset(json.load(f)["nodes"])


def is_comfyui_builtin(kind: str) -> bool:
    # the list's source writes "EmptyAceStep1.5LatentAudio" as "EmptyAceStep1_5LatentAudio"
    return kind in comfyui_builtin_nodes() or kind.replace(".", "_") in comfyui_builtin_nodes()


def missing_node_types(prompt: dict, registry: dict[str, NodeSpec]) -> dict[str, list[str]]:
    """{class_type: [node ids]} for every node whose class is not in the registry, in prompt order."""
    out: dict[str, list[str]] = {}
    for node_id, node in prompt.items():
        kind = node.get("class_type") if isinstance(node, dict) else None
        if isinstance(kind, str) and kind not in registry:
            out.setdefault(kind, []).append(str(node_id))
    return out


def describe_missing_nodes(missing: dict[str, list[str]]) -> str:
    return "; ".join(f"{kind} (node{'s' if len(ids) > 1 else ''} {', '.join(ids)})" for kind, ids in missing.items())


def _missing_message(kind: str) -> str:
    if kind.startswith(LEGACY_GROUP_PREFIXES):  # old frontends' group nodes; their widget layout is not recorded
        return (f"{kind!r} is a legacy group node, which is not supported: open the workflow in the ComfyUI "
                "frontend and convert it to a subgraph (or ungroup it), then save again")
    if is_comfyui_builtin(kind):
        return f"{kind!r} is a ComfyUI built-in node that is not implemented by latentgraph"
    return f"Node type {kind!r} is not installed (a custom node, not part of ComfyUI or latentgraph)"


def _model_error(err: dict, node_id: str, env: Environment) -> dict:
    info = err["extra_info"]
    name, value = info.get("input_name"), info.get("received_value")
    folder = INPUT_FOLDERS[name]
    config = info.get("input_config") or []
    installed = list(config[0]) if config and isinstance(config[0], list) else []
    where = os.path.join(env.models_dir or "models", folder)
    stand_in, hint = substitute(env, folder, str(value), installed)
    message = f"Model file {value!r} is not installed: expected in {where} (input {name} of node {node_id}){hint}"
    return {"type": "missing_model", "message": message, "details": err["details"],
            "extra_info": {**info, "file": value, "folder": folder, "path": where, "installed": installed,
                           "suggestion": stand_in}}


def _title(node: Any) -> str | None:
    """A node's `_meta.title`, if the client sent one of the right shape."""
    meta = node.get("_meta") if isinstance(node, dict) else None
    title = meta.get("title") if isinstance(meta, dict) else None
    return title if isinstance(title, str) else None


def explain(result: Any, prompt: dict, registry: dict[str, NodeSpec], env: Environment | None = None) -> Any:
    """Rewrite a ``server.graph.Validation`` in place with missing-node and missing-model errors; returns it."""
    if not result.node_errors:  # a missing node type or model file is always a node error
        return result
    env = env or Environment()
    missing = missing_node_types(prompt, registry) if isinstance(prompt, dict) else {}
    models = []
    for node_id, entry in result.node_errors.items():
        errors = entry["errors"]
        for i, err in enumerate(errors):
            kind = entry.get("class_type")
            if err["type"] == "invalid_prompt" and isinstance(kind, str) and kind in missing:
                errors[i] = {"type": "missing_node_type", "message": _missing_message(kind),
                             "details": f"node {node_id} ({kind})",
                             "extra_info": {"class_type": kind, "comfyui_builtin": is_comfyui_builtin(kind)}}
            elif err["type"] == "value_not_in_list" and err["extra_info"].get("input_name") in INPUT_FOLDERS:
                errors[i] = _model_error(err, node_id, env)
                models.append({"node_id": node_id, **{k: errors[i]["extra_info"][k] for k in
                                                      ("input_name", "file", "folder", "suggestion")}})
    files = ", ".join(f"{m['file']} ({m['folder']})" for m in models)
    if missing:
        # ComfyUI (PR #12194) answers this type with the first missing node's id, class and title, which its
        # frontend turns into the missing-nodes dialog; the full map is ours
        builtin = {k: ids for k, ids in missing.items() if is_comfyui_builtin(k)}
        custom = {k: ids for k, ids in missing.items() if k not in builtin}
        parts = []
        if builtin:
            parts.append(f"not implemented by latentgraph (ComfyUI built-ins): {describe_missing_nodes(builtin)}")
        if custom:
            parts.append(f"not installed (custom nodes): {describe_missing_nodes(custom)}")
        if models:
            parts.append(f"missing model files: {files}")
        first_kind, first_ids = next(iter(missing.items()))
        title = _title(prompt.get(first_ids[0])) or first_kind
        result.error = {"type": "missing_node_type", "message": "Cannot execute because of missing node types: "
                        + "; ".join(parts), "details": describe_missing_nodes(missing),
                        "extra_info": {"node_id": first_ids[0], "class_type": first_kind, "node_title": title,
                                       "missing_node_types": missing, "not_implemented": sorted(builtin),
                                       **({"missing_models": models} if models else {})}}
    elif models and result.error is not None:
        result.error["extra_info"] = {**result.error.get("extra_info", {}), "missing_models": models}
        result.error["message"] = f"{result.error['message']}: missing model files: {files}"
    return result
