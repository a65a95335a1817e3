"""The executor: order, content-addressed caching, re-running exactly what changed, hooks, errors, interrupts."""
import copy
import threading

import pytest
from PIL import Image

from nodes.node import REGISTRY, Input, Output, node
from nodes.types import INT
from server.cache import OutputCache, size_of
from server.executor import Executor, Hooks
from server.graph import validate


def graph():
    """Two branches: 1 → 2 → 3 → 4 (save) and 5 → 6 → 7 (save)."""
    return {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 32, "height": 16, "batch_size": 1, "color": 0x102030}},
        "2": {"class_type": "ImageScale", "inputs": {"image": ["1", 0], "upscale_method": "bilinear", "width": 16,
                                                     "height": 0, "crop": "disabled"}},
        "3": {"class_type": "ImageInvert", "inputs": {"image": ["2", 0]}},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "a"}},
        "5": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 2, "color": 0xFFFFFF}},
        "6": {"class_type": "ImageCrop", "inputs": {"image": ["5", 0], "width": 4, "height": 4, "x": 2, "y": 2}},
        "7": {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": "b"}},
    }


@pytest.fixture
def executor(registry, env):
    return Executor(registry, env, OutputCache())


def test_runs_in_dependency_order_and_only_what_outputs_need(executor):
    report = executor.run(graph(), ["4"])
    assert report.status == "success" and report.error is None
    assert report.executed == ["1", "2", "3", "4"]
    assert report.outputs == {"4": {"images": [{"filename": "a_00001_.png", "subfolder": "", "type": "output"}]}}


def test_one_changed_input_reruns_exactly_its_descendants(executor):
    prompt = graph()
    first = executor.run(prompt, ["4", "7"])
    assert sorted(first.executed) == ["1", "2", "3", "4", "5", "6", "7"]
    assert executor.run(prompt, ["4", "7"]).executed == []  # unchanged: nothing runs

    changed = copy.deepcopy(prompt)
    changed["2"]["inputs"]["width"] = 8
    report = executor.run(changed, ["4", "7"])
    assert report.executed == ["2", "3", "4"]
    assert sorted(report.cached) == ["1", "7"]  # 7's branch is served whole; 1 feeds the re-run
    assert report.outputs["4"]["images"][0]["filename"] == "a_00002_.png"
    assert report.outputs["7"]["images"][0]["filename"] == "b_00001_.png"  # cached output re-reported

    changed["5"]["inputs"]["color"] = 0
    assert executor.run(changed, ["4", "7"]).executed == ["5", "6", "7"]


def test_keys_ignore_node_ids_and_input_order(executor):
    executor.run(graph(), ["4"])
    renumbered = {str(int(k) + 100): v for k, v in copy.deepcopy(graph()).items()}
    for entry in renumbered.values():
        entry["inputs"] = dict(reversed(list(entry["inputs"].items())))
        for name, value in entry["inputs"].items():
            if isinstance(value, list):
                entry["inputs"][name] = [str(int(value[0]) + 100), value[1]]
    report = executor.run(renumbered, ["104"])
    assert report.executed == [] and report.cached == ["104"]


def test_shared_work_between_prompts(executor):
    executor.run(graph(), ["4"])
    other = {k: v for k, v in graph().items() if k in ("1", "2")}
    other["9"] = {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}}
    report = executor.run(other, ["9"])
    assert report.executed == ["9"] and report.cached == ["2"]
    assert report.outputs["9"]["images"][0]["type"] == "temp"


def test_evicted_ancestors_rerun_only_when_needed(registry, env):
    cache = OutputCache(max_entries=2)
    ex = Executor(registry, env, cache)
    ex.run(graph(), ["4"])  # keeps only 3 and 4
    assert ex.run(graph(), ["4"]).executed == []
    changed = graph()
    changed["4"]["inputs"]["filename_prefix"] = "c"
    assert ex.run(changed, ["4"]).executed == ["4"]  # 3 still cached; 1, 2 not needed
    cache.clear()
    assert ex.run(changed, ["4"]).executed == ["1", "2", "3", "4"]


def test_loaded_file_change_invalidates(registry, env):
    path = f"{env.input_dir}/pic.png"
    Image.new("RGB", (4, 4), "red").save(path)
    prompt = {"1": {"class_type": "LoadImage", "inputs": {"image": "pic.png"}},
              "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "p"}}}
    ex = Executor(registry, env)
    assert ex.run(prompt, ["2"]).executed == ["1", "2"]
    assert ex.run(prompt, ["2"]).executed == []
    Image.new("RGB", (4, 4), "blue").save(path)  # same name, new pixels
    assert ex.run(prompt, ["2"]).executed == ["1", "2"]


def test_uses_validation_values(registry, env):
    prompt = graph()
    prompt["1"]["inputs"]["batch_size"] = 1.0  # a float that validation coerces to int
    report = validate(prompt, registry, env)
    run = Executor(registry, env).run(prompt, report.outputs, values=report.values)
    assert run.status == "success" and sorted(run.executed) == ["1", "2", "3", "4", "5", "6", "7"]


def test_hooks_see_everything(executor):
    events = []
    hooks = Hooks(on_start=lambda pid: events.append(("start", pid)),
                  on_cached=lambda ids: events.append(("cached", ids)),
                  on_node_start=lambda n: events.append(("node", n)),
                  on_progress=lambda n, v, m, p: events.append(("progress", n, v, m)),
                  on_executed=lambda n, ui, entry: events.append(("executed", n, ui["images"][0]["filename"],
                                                                   entry["cached"])))
    executor.run(graph(), ["7"], prompt_id="p1", hooks=hooks)
    assert events == [("start", "p1"), ("cached", []), ("node", "5"), ("node", "6"), ("node", "7"),
                      ("progress", "7", 1, 2), ("progress", "7", 2, 2), ("executed", "7", "b_00001_.png", False)]
    events.clear()
    executor.run(graph(), ["7"], prompt_id="p2", hooks=hooks)
    assert events == [("start", "p2"), ("cached", ["7"]), ("executed", "7", "b_00001_.png", True)]


def test_node_exception_becomes_a_structured_error(executor):
    prompt = {"1": {"class_type": "PrimitiveInt", "inputs": {"value": 7}},
              "2": {"class_type": "IntMath", "inputs": {"a": ["1", 0], "b": 0, "operation": "divide"}}}
    report = executor.run(prompt, ["2"], prompt_id="p")
    assert report.status == "error" and report.executed == ["1"]
    err = report.error
    assert (err["prompt_id"], err["node_id"], err["node_type"]) == ("p", "2", "IntMath")
    assert err["exception_type"] == "ZeroDivisionError" and "b = 0" in err["exception_message"]
    assert err["current_inputs"] == {"b": "0", "operation": "'divide'", "a": "7"}
    assert err["executed"] == ["1"] and err["current_outputs"] == ["1"]
    assert any("ZeroDivisionError" in line for line in err["traceback"])
    again = executor.run(prompt, ["2"])  # the good parent is cached, the failure is not: it is tried again
    assert (again.status, again.executed, again.cached, again.error["node_id"]) == ("error", [], ["1"], "2")


def test_interrupt_between_nodes(executor):
    stop = threading.Event()
    hooks = Hooks(on_node_start=lambda n: stop.set() if n == "2" else None)
    report = executor.run(graph(), ["4"], prompt_id="p", hooks=hooks, interrupt=stop)
    assert report.status == "interrupted" and report.executed == ["1", "2"]
    assert report.error == {"prompt_id": "p", "node_id": "3", "node_type": "ImageInvert", "executed": ["1", "2"]}


def test_interrupt_inside_a_node(executor, env):
    stop = threading.Event()
    hooks = Hooks(on_progress=lambda n, v, m, p: stop.set())  # SaveImage checks in after each image it writes
    prompt = graph()
    prompt["5"]["inputs"]["batch_size"] = 3
    report = executor.run(prompt, ["7"], hooks=hooks, interrupt=stop)
    assert report.status == "interrupted" and report.error["node_id"] == "7"
    assert report.executed == ["5", "6"]


def test_progress_from_a_long_running_node(registry, env):
    @node(category="test", outputs=[Output(INT)], name="_TestCountdown", version="1.0.0")
    class Countdown:
        steps: int = Input(default=3)

        def run(self, ctx):
            for i in range(self.steps):
                ctx.progress(i + 1, self.steps)
            return (self.steps,)

    spec = REGISTRY.pop("_TestCountdown")  # keep the shared registry to shipped nodes
    seen = []
    ex = Executor({**registry, "_TestCountdown": spec}, env)
    report = ex.run({"1": {"class_type": "_TestCountdown", "inputs": {"steps": 3}}}, ["1"],
                    hooks=Hooks(on_progress=lambda n, v, m, p: seen.append((n, v, m))))
    assert report.status == "success" and seen == [("1", 1, 3), ("1", 2, 3), ("1", 3, 3)]


def test_long_chains_do_not_recurse(executor):
    n = 3000
    prompt = {"0": {"class_type": "PrimitiveInt", "inputs": {"value": 0}}}
    for i in range(1, n):
        prompt[str(i)] = {"class_type": "IntMath", "inputs": {"a": [str(i - 1), 0], "b": 1, "operation": "add"}}
    report = executor.run(prompt, [str(n - 1)])
    assert report.status == "success" and len(report.executed) == n
    assert executor.cache.get(next(iter(executor.cache._items)))  # populated
    assert executor.run(prompt, [str(n - 1)]).executed == []


def test_unvalidated_bad_prompts_fail_cleanly(executor):
    cycle = {"1": {"class_type": "ImageInvert", "inputs": {"image": ["2", 0]}},
             "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}}}
    report = executor.run(cycle, ["1"])
    assert report.status == "error" and "cycle" in report.error["exception_message"]
    assert report.error["exception_type"] == "ValueError"
    report = executor.run({"1": {"class_type": "Nope", "inputs": {}}}, ["1"])
    assert report.status == "error" and report.error["node_id"] == "1" and report.error["node_type"] == "Nope"


def test_cache_is_lru_bounded_by_entries_and_bytes():
    import torch

    cache = OutputCache(max_entries=3, max_bytes=1000)
    small = (torch.zeros(50),)  # 200 bytes
    for key in "abc":
        cache.put(key, small)
    cache.get("a")  # a is now the most recent
    cache.put("d", small)
    assert "b" not in cache and all(k in cache for k in "acd")
    cache.put("e", (torch.zeros(150),))  # 600 bytes: the byte bound evicts the oldest until it fits
    assert cache.stats()["bytes"] <= 1000 and "e" in cache and "c" not in cache
    assert not cache.put("huge", (torch.zeros(1000),)) and "huge" not in cache
    stats = cache.stats()
    assert stats["entries"] == len(cache) and stats["hits"] == 1 and stats["evictions"] >= 2
    assert size_of(({"samples": torch.zeros(4, dtype=torch.float16)}, [torch.zeros(2)], "x")) == 8 + 8 + 64


def test_failing_fingerprint_is_reported_as_that_nodes_error(registry, env):
    @node(category="test", outputs=[Output(INT)], name="_TestFlaky", version="1.0.0")
    class Flaky:
        n: int = Input(default=1)

        @classmethod
        def fingerprint(cls, values, env):
            raise OSError("disk on fire")

        def run(self, ctx):
            return (self.n,)

    spec = REGISTRY.pop("_TestFlaky")
    started = []
    report = Executor({**registry, "_TestFlaky": spec}, env).run(
        {"5": {"class_type": "_TestFlaky", "inputs": {"n": 1}}}, ["5"], prompt_id="p",
        hooks=Hooks(on_start=started.append))
    assert started == ["p"] and report.status == "error"
    assert (report.error["node_id"], report.error["node_type"]) == ("5", "_TestFlaky")
    assert "disk on fire" in report.error["exception_message"] and report.error["exception_type"] == "OSError"
