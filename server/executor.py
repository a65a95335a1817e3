"""Run a validated prompt: dependency order, content-addressed caching, progress, interruption, errors.

A node's cache key is a hash of its class, class version, constant inputs, the keys (and output slots) of
the nodes feeding it, and its ``fingerprint`` (e.g. the bytes of a loaded file). Each key is computed once per
run from its parents' keys — never from node ids and never by re-walking all ancestors — so planning is linear
in graph size, identical work in any prompt shares an entry, and a changed widget invalidates exactly that
node's descendants. Only nodes the requested outputs need, and whose results are not cached, are run.

Every run is profiled (server/profile.py: time, peak memory, cached or why it ran) and carries provenance
(server/provenance.py: the SHA-256 of every model file it loads, and the node versions)."""
from __future__ import annotations

import gc
import hashlib
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from nodes.node import Context, Environment, Interrupted, NodeSpec, Result

from .cache import OutputCache
from .profile import FIRST_RUN, NodeProfiler, why_ran
from .provenance import HashCache, RunModels

LAST_RUNS_KEPT = 100_000  # node ids remembered for why_ran; beyond, the memory starts over


@dataclass
class Hooks:
    """Observers of a run; all optional; called on the executor's thread."""

    on_start: Callable[[str], None] | None = None                       # prompt_id
    on_cached: Callable[[list[str]], None] | None = None                # node ids served from cache
    on_node_start: Callable[[str], None] | None = None                  # node id
    on_progress: Callable[[str, int, int, Any], None] | None = None     # node id, value, max, preview or None
    on_executed: Callable[[str, dict, dict | None], None] | None = None  # node id, ui dict, profile entry


@dataclass
class RunReport:
    status: str                       # "success" | "error" | "interrupted"
    executed: list[str] = field(default_factory=list)   # node ids actually run, in order
    cached: list[str] = field(default_factory=list)     # node ids served from the cache
    outputs: dict = field(default_factory=dict)         # {node id: ui dict}
    error: dict | None = None         # ComfyUI execution_error / execution_interrupted payload
    seconds: float = 0.0
    profile: dict = field(default_factory=dict)         # {node id: profile entry}, cached ones first (profile.py)
    provenance: dict | None = None    # models (SHA-256) and node versions (provenance.py); the PNGs' `latentgraph`


class _PlanError(Exception):
    def __init__(self, node_id: str, node_type: str | None, message: str):
        super().__init__(message)
        self.node_id, self.node_type = node_id, node_type


@dataclass(slots=True)
class _Node:
    spec: NodeSpec
    consts: dict
    links: list[tuple[str, str, int]]  # (input name, source id, source slot)
    key: str = ""
    upstream: list = field(default_factory=list)  # (input name, source key, source slot), sorted
    extra: Any = None  # the fingerprint


class Executor:
    """Runs prompts against a node registry; keeps results in ``cache`` between runs."""

    def __init__(self, registry: dict[str, NodeSpec], env: Environment, cache: OutputCache | None = None,
                 resources: Any = None, hashes: HashCache | None = None, profile: bool = True):
        """`hashes`: where model hashes are remembered (default: in memory). `profile=False` only serves
        benchmarks/executor.py, to measure what profiling costs."""
        self.registry = registry
        self.env = env
        self.cache = cache if cache is not None else OutputCache()
        self.resources = resources
        self.hashes = hashes if hashes is not None else HashCache()
        self.profiler = NodeProfiler(getattr(resources, "device", None)) if profile else None
        self.last: dict[str, _Node] = {}  # each node id as it last ran or was served: what why_ran compares with

    # -- planning ---------------------------------------------------------------------------------------------
    def _parse(self, prompt: dict, node_id: str, values: dict | None) -> _Node:
        entry = prompt.get(node_id)
        if not isinstance(entry, dict):
            raise _PlanError(node_id, None, f"node {node_id} is missing from the prompt")
        spec = self.registry.get(entry.get("class_type"))
        if spec is None:
            raise _PlanError(node_id, entry.get("class_type"), f"node {node_id}: unknown type {entry.get('class_type')!r}")
        given = values.get(node_id) if values is not None else None
        consts, links = {}, []
        for name, value in (entry.get("inputs") or {}).items():
            inp = spec.inputs.get(name)
            if inp is None:
                continue
            if type(value) is list and len(value) == 2 and type(value[1]) is int:  # a link (validated prompt)
                source = value[0]
                links.append((name, source if type(source) is str else str(source), value[1]))
            elif given is not None:
                if name in given:
                    consts[name] = given[name]
            else:
                if isinstance(value, dict) and "__value__" in value:
                    value = value["__value__"]
                try:
                    consts[name] = inp.coerce(value, self.env)
                except ValueError as exc:
                    raise _PlanError(node_id, spec.type_name, f"node {node_id} ({spec.type_name}) input {name}: {exc}")
        return _Node(spec, consts, links)

    def _order(self, prompt: dict, outputs: list[str], values: dict | None) -> dict[str, _Node]:
        """The nodes the outputs depend on, in dependency order, each with its cache key (computed as the node
        is finished, from its parents' keys; iterative DFS because chains may be thousands of nodes long)."""
        order: dict[str, _Node] = {}
        parsed: dict[str, _Node] = {}
        active: set[str] = set()  # expanded but not finished: meeting one again means a cycle
        for root in outputs:
            stack = [(root, False)]
            while stack:
                node_id, finished = stack.pop()
                if finished:
                    active.discard(node_id)
                    item = order[node_id] = parsed[node_id]
                    try:
                        item.key = self._key(item, order)
                    except Exception as exc:  # a node's fingerprint() failing is that node's error
                        raise _PlanError(node_id, item.spec.type_name,
                                         f"node {node_id} ({item.spec.type_name}): fingerprint failed: {exc}") from exc
                    continue
                if node_id in order:
                    continue
                if node_id in active:
                    raise _PlanError(node_id, parsed[node_id].spec.type_name, f"node {node_id} is in a dependency cycle")
                item = parsed[node_id] = self._parse(prompt, node_id, values)
                active.add(node_id)
                stack.append((node_id, True))
                stack.extend((source, False) for _, source, _ in item.links if source not in order)
        return order

    def _key(self, item: _Node, order: dict[str, _Node]) -> str:
        """Hash of class, version, constants, parents' keys and fingerprint. Parts are joined with a control
        character that repr() never emits, so distinct inputs cannot run together into the same text."""
        spec, consts = item.spec, item.consts
        item.upstream = [(name, order[src].key, slot) for name, src, slot in sorted(item.links)]
        parts = [spec.type_name, spec.version]
        parts += [f"{name}={consts[name]!r}" for name in sorted(consts)]
        parts += [f"{name}<{key}:{slot}" for name, key, slot in item.upstream]
        extra = item.extra = spec.fingerprint(consts, self.env)
        if extra is not None:
            parts.append(f"fingerprint={extra!r}")
        return hashlib.blake2b("\x1f".join(parts).encode(), digest_size=16).hexdigest()

    def _plan(self, order: dict[str, _Node], outputs: list[str]) -> tuple[list[str], dict[str, Result]]:
        """Which nodes must run: walk back from the outputs, stopping at cached results."""
        hits: dict[str, Result] = {}
        needed: set[str] = set()
        stack, seen = list(outputs), set(outputs)
        while stack:
            node_id = stack.pop()
            item = order[node_id]
            result = self.cache.get(item.key)
            if result is not None:
                hits[node_id] = result
                continue
            needed.add(node_id)
            for _, source, _ in item.links:
                if source not in seen:
                    seen.add(source)
                    stack.append(source)
        return [n for n in order if n in needed], hits

    # -- running ----------------------------------------------------------------------------------------------
    def run(self, prompt: dict, outputs: list[str], *, prompt_id: str = "", extra_data: dict | None = None,
            hooks: Hooks | None = None, interrupt: threading.Event | None = None,
            values: dict | None = None) -> RunReport:
        """Run what `outputs` need. `values` may carry Validation.values (coerced constants) to skip re-coercion."""
        started = time.perf_counter()
        hooks = hooks or Hooks()
        outputs = [str(o) for o in outputs]
        report = RunReport("success")
        if hooks.on_start:
            hooks.on_start(prompt_id)
        # Planning allocates many small objects and no reference cycles: pausing the cyclic collector keeps it
        # from scanning the whole heap (torch's objects included) mid-plan, which made large plans superlinear.
        collecting = gc.isenabled()
        gc.disable()
        try:
            order = self._order(prompt, outputs, values)
            to_run, hits = self._plan(order, outputs)
        except _PlanError as exc:
            report.status = "error"
            report.error = self._error_payload(prompt_id, exc.node_id, exc.node_type, report, exc, {}, {})
            report.seconds = time.perf_counter() - started
            return report
        finally:
            if collecting:
                gc.enable()
        results: dict[str, Result] = dict(hits)
        report.cached = [n for n in order if n in hits]
        profiler, profile = self.profiler, report.profile
        if profiler is not None:
            profiler.begin()
            for node_id in report.cached:
                profile[node_id] = profiler.cached(order[node_id].spec.type_name)
        if hooks.on_cached:
            hooks.on_cached(list(report.cached))
        for node_id in report.cached:
            self._emit_ui(node_id, hits[node_id], report, hooks)

        models = RunModels(order, self.env, self.hashes)  # hashing starts now, in the background
        extra_pnginfo = (extra_data or {}).get("extra_pnginfo") or {}
        is_set = interrupt.is_set if interrupt is not None else None
        for node_id in to_run:
            item = order[node_id]
            if is_set is not None and is_set():
                return self._stop(report, prompt_id, node_id, item, order, models, started)
            if hooks.on_node_start:
                hooks.on_node_start(node_id)
            inputs = dict(item.consts)
            for name, source, slot in item.links:
                inputs[name] = results[source].outputs[slot]
            pnginfo = extra_pnginfo
            if item.spec.hidden and "EXTRA_PNGINFO" in item.spec.hidden.values():  # it writes files: with provenance
                if report.provenance is None:
                    report.provenance = models.record(wait=True)
                pnginfo = {**extra_pnginfo, "latentgraph": report.provenance}
            ctx = Context(node_id, self.env, prompt, pnginfo, hooks.on_progress, is_set, self.resources)
            if profiler is not None:
                previous = self.last.get(node_id)
                why = FIRST_RUN if previous is None else why_ran(item, previous)
            node_started = time.perf_counter_ns()
            try:
                result = item.spec.call(ctx, inputs)
            except Interrupted:
                return self._stop(report, prompt_id, node_id, item, order, models, started)
            except Exception as exc:  # any node failure becomes a structured error naming the node
                report.status = "error"
                report.error = self._error_payload(prompt_id, node_id, item.spec.type_name, report, exc, inputs,
                                                   results)
                return self._finish(report, order, models, started)
            if profiler is not None:
                profile[node_id] = profiler.entry(item.spec.type_name, node_started, why)
            results[node_id] = result
            self.cache.put(item.key, result)
            report.executed.append(node_id)
            self._emit_ui(node_id, result, report, hooks)
        return self._finish(report, order, models, started)

    def _finish(self, report: RunReport, order: dict[str, _Node], models: RunModels, started: float) -> RunReport:
        """Complete the provenance (waiting for hashes only after a success) and remember the nodes that ran or
        were served, for the next run's why_ran."""
        if report.provenance is None:
            report.provenance = models.record(wait=report.status == "success")
        if len(self.last) > LAST_RUNS_KEPT:
            self.last.clear()
        for node_id in report.cached:
            self.last[node_id] = order[node_id]
        for node_id in report.executed:
            self.last[node_id] = order[node_id]
        report.seconds = time.perf_counter() - started
        return report

    @staticmethod
    def _emit_ui(node_id: str, result: Result, report: RunReport, hooks: Hooks) -> None:
        if result.ui is not None:
            report.outputs[node_id] = result.ui
            if hooks.on_executed:
                hooks.on_executed(node_id, result.ui, report.profile.get(node_id))

    def _stop(self, report: RunReport, prompt_id: str, node_id: str, item: _Node, order: dict[str, _Node],
              models: RunModels, started: float) -> RunReport:
        report.status = "interrupted"
        report.error = {"prompt_id": prompt_id, "node_id": node_id, "node_type": item.spec.type_name,
                        "executed": list(report.executed)}
        return self._finish(report, order, models, started)

    @staticmethod
    def _error_payload(prompt_id: str, node_id: str, node_type: str | None, report: RunReport, exc: BaseException,
                       inputs: dict, results: dict) -> dict:
        # a planning error reports what caused it (e.g. OSError from a fingerprint), else a plain ValueError
        kind = type(exc.__cause__ or ValueError()) if isinstance(exc, _PlanError) else type(exc)
        name = kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"
        return {"prompt_id": prompt_id, "node_id": node_id, "node_type": node_type,
                "executed": list(report.executed), "exception_message": str(exc), "exception_type": name,
                "traceback": traceback.format_exception(exc),
                "current_inputs": {k: _describe(v) for k, v in inputs.items()},
                "current_outputs": list(results)}


def _describe(value: Any) -> str:
    """A short, JSON-safe picture of an input value for error reports."""
    if isinstance(value, torch.Tensor):
        return f"Tensor{list(value.shape)} {str(value.dtype).removeprefix('torch.')}"
    text = repr(value)
    return text if len(text) <= 200 else text[:197] + "..."
