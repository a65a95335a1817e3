"""Model-affinity routing (server/routing.py) on the real queue, with workers whose stats say what they hold. The
same router feeds Ray actors in test_ray.py, through HTTP."""
from __future__ import annotations

import os
import threading
import time

import pytest
import torch

from nodes.node import Environment
from server.models import ModelResidency
from server.queue import PromptQueue
from server.routing import Router, model_files, resident_models


class Runner:
    """What the router reads of a worker's runner."""

    def __init__(self, resident=(), room=1 << 30, ready=True):
        self.resident = {rel: {"bytes": 1, "builds": 1} for rel in resident}
        self.room = room
        self.ready = ready

    def stats(self) -> dict:
        return {"resident": self.resident, "room": self.room}

    def wait_ready(self, timeout: float) -> bool:
        return self.ready


@pytest.fixture
def models(tmp_path):
    folder = tmp_path / "models" / "checkpoints"
    folder.mkdir(parents=True)
    for name, size in (("a.safetensors", 100), ("b.safetensors", 300)):
        (folder / name).write_bytes(b"\0" * size)
    return Environment(models_dir=str(tmp_path / "models"), input_dir=str(tmp_path), output_dir=str(tmp_path),
                       temp_dir=str(tmp_path))


@pytest.fixture
def queue(tmp_path):
    q = PromptQueue(tmp_path / "q.sqlite3")
    yield q
    q.close()


def loads(ckpt: str | None) -> dict:
    """A prompt that reads checkpoint `ckpt` (or no model file)."""
    image = {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
             "9": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}}}
    if ckpt is not None:  # what the router reads; the prompts never run here
        image["2"] = {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}}
    return image


def router_with(queue, registry, env, max_wait=60.0, **runners):
    router = Router(queue, registry, env, max_wait=max_wait)
    return router, {name: router.source(name, runner) for name, runner in runners.items()}


def test_what_a_prompt_needs_is_the_model_files_its_loaders_read(registry, models):
    assert model_files(loads("a.safetensors"), registry, models) == {"checkpoints/a.safetensors": 100}
    assert model_files(loads(None), registry, models) == {}
    assert model_files(loads("missing.safetensors"), registry, models) == {}  # reported when it runs


def test_a_worker_reports_the_model_files_its_residency_holds(models):
    path = os.path.join(models.models_dir, "checkpoints", "b.safetensors")
    residency = ModelResidency("cpu")
    residency.cached(("checkpoint", path, (300, 0), "torch.float32"), lambda: torch.nn.Linear(4, 4))
    residency.load(torch.nn.Linear(2, 2))  # a module with no file behind it
    (rel, entry), = resident_models(residency, models.models_dir).items()
    assert rel == "checkpoints/b.safetensors" and entry["bytes"] == 4 * 4 * 4 + 4 * 4 and entry["builds"] == 1
    assert len(entry["hash"]) == 16


def test_a_prompt_goes_to_the_idle_worker_holding_its_checkpoint(queue, registry, models):
    router, src = router_with(queue, registry, models, a=Runner(["checkpoints/a.safetensors"]),
                              b=Runner(["checkpoints/b.safetensors"]))
    queue.put("wants-b", loads("b.safetensors"), {}, ["9"])
    queue.put("wants-a", loads("a.safetensors"), {}, ["9"])
    taken = src["a"].take(0)
    assert taken.prompt_id == "wants-a"  # passes over the older prompt: idle b holds its checkpoint
    assert taken.meta == {"worker": "a", "route_reason": "holds checkpoints/a.safetensors"}
    assert src["b"].take(0).prompt_id == "wants-b"


def test_without_a_holder_the_worker_that_loads_it_most_cheaply_takes_it(queue, registry, models):
    router, src = router_with(queue, registry, models, small=Runner(room=50), roomy=Runner(room=10_000),
                              partial=Runner(["checkpoints/b.safetensors"], room=0))
    both = {**loads("a.safetensors"), "5": {"class_type": "CheckpointLoaderSimple",
                                            "inputs": {"ckpt_name": "b.safetensors"}}}
    queue.put("a", loads("a.safetensors"), {}, ["9"])
    assert src["small"].take(0) is None  # 100 bytes do not fit in its 50: roomy loads them without evicting
    assert src["partial"].take(0) is None
    taken = src["roomy"].take(0)
    assert taken.prompt_id == "a" and taken.meta["route_reason"] == "loads checkpoints/a.safetensors (0 MB; 0 MB free)"
    queue.put("a+b", both, {}, ["9"])
    assert src["small"].take(0) is None  # holding b already, partial has the least left to load
    assert src["partial"].take(0).prompt_id == "a+b"


def test_a_worker_that_left_a_prompt_to_another_takes_the_next_as_soon_as_that_one_claims(queue, registry, models):
    router, src = router_with(queue, registry, models, a=Runner(), b=Runner())
    queue.put("x", loads("a.safetensors"), {}, ["9"])
    queue.put("y", loads("b.safetensors"), {}, ["9"])
    got = []
    waiting = threading.Thread(target=lambda: got.append(src["b"].take(60)))
    waiting.start()
    while len(router._seen) < 2:  # b has looked: both prompts are a's to load (equal cost, a first by name)
        time.sleep(0.01)
    assert src["a"].take(0).prompt_id == "x"
    waiting.join(20)
    assert got and got[0].prompt_id == "y"  # woken by a's claim, not by its own timeout


def test_a_prompt_waits_a_bounded_time_for_the_busy_worker_holding_its_checkpoint(queue, registry, models):
    router, src = router_with(queue, registry, models, max_wait=0.3, busy=Runner(["checkpoints/a.safetensors"]),
                              other=Runner())
    queue.put("first", loads("a.safetensors"), {}, ["9"])
    assert src["busy"].take(0).prompt_id == "first"  # now busy with it
    queue.put("second", loads("a.safetensors"), {}, ["9"])
    queue.put("plain", loads(None), {}, ["9"])
    started = time.monotonic()
    assert src["other"].take(0).prompt_id == "plain"  # it takes what it can meanwhile
    assert router.recheck_in() > 0
    taken = None
    while taken is None:
        taken = src["other"].take(1.0)
    assert 0.25 < time.monotonic() - started < 5
    assert taken.prompt_id == "second" and taken.meta["route_reason"].startswith("waited 0.")
    assert "for busy busy; loads checkpoints/a.safetensors" in taken.meta["route_reason"]


def test_a_prompt_whose_worker_died_runs_elsewhere_once(queue, registry, models):
    router, src = router_with(queue, registry, models, a=Runner(), b=Runner(), starting=Runner(ready=False))
    queue.put("p", loads(None), {}, ["9"])
    item = src["a"].take(0)
    error = {"node_id": "9", "exception_message": "the Ray actor a died"}
    assert src["a"].retry(item, error) and queue.state_of("p") == "pending"
    assert src["starting"].take(0) is None  # not up yet
    assert src["a"].take(0) is None  # not where it died
    again = src["b"].take(0)
    assert again.meta["attempts"] == [{"worker": "a", "status": "interrupted", "node": "9",
                                       "reason": "the Ray actor a died"}]
    assert again.meta["worker"] == "b"
    assert not src["b"].retry(again, error)  # one retry by default: the second death ends it, both recorded
    assert [a["worker"] for a in again.meta["attempts"]] == ["a", "b"]
