"""The executor in a child process (server/runners.py), driven the way a worker drives it."""
from __future__ import annotations

import os
import signal
import threading

import pytest

from nodes.node import Environment
from server.executor import Hooks
from server.runners import ProcessRunner, RunnerConfig
from patience import patience
from server_helpers import image_prompt, slow_prompt


@pytest.fixture(scope="module")
def runner(tmp_path_factory):
    d = tmp_path_factory.mktemp("runner")
    env = Environment(models_dir=str(d / "models"), input_dir=str(d / "input"), output_dir=str(d / "output"),
                      temp_dir=str(d / "temp"))
    r = ProcessRunner(RunnerConfig("cpu", env, cache_entries=64, cache_bytes=1 << 30))
    yield r
    r.close()
    assert not r._proc.is_alive()


def recording_hooks(events: list, on_node=None) -> Hooks:
    def record(kind):
        def hook(*args):
            events.append((kind, *args))
            if kind == "node_start" and on_node is not None:
                on_node(args[0])
        return hook

    return Hooks(on_start=record("start"), on_cached=record("cached"), on_node_start=record("node_start"),
                 on_progress=record("progress"), on_executed=record("executed"))


def run(runner, prompt, outputs=("9",), on_node=None):
    events: list = []
    report = runner.run(prompt, list(outputs), prompt_id="p", extra_data={}, hooks=recording_hooks(events, on_node))
    return report, events


def test_runs_in_another_process_with_hooks_and_a_cache_that_lives_there(runner):
    report, events = run(runner, image_prompt(color=7, prefix="child"))
    assert report.status == "success" and report.executed == ["1", "2", "9"]
    assert runner._proc.pid != os.getpid()
    assert [e[:2] for e in events if e[0] != "progress"] == [("start", "p"), ("cached", []), ("node_start", "1"),
                                                             ("node_start", "2"), ("node_start", "9"),
                                                             ("executed", "9")]
    image = events[-1][2]["images"][0]
    assert image["type"] == "output" and image["filename"].startswith("child")

    again, events = run(runner, image_prompt(color=7, prefix="child"))
    assert again.executed == [] and again.cached == ["9"] and ("cached", ["9"]) in events
    assert runner.stats()["cache"]["entries"] >= 3 and runner.stats()["type"] == "cpu"
    runner.free(unload_models=False, free_memory=True)
    assert runner.stats()["cache"]["entries"] == 0
    assert run(runner, image_prompt(color=7, prefix="child"))[0].executed == ["1", "2", "9"]


def test_interrupt_reaches_the_child(runner):
    # set as node 2 starts, seen before node 3: node 2 (a 1024 → 2048 bicubic resize) must outlast the parent's
    # reaction to the child's message; at 256 px it sometimes did not
    report, events = run(runner, slow_prompt(1024, seed=1), on_node=lambda n: n == "2" and runner.interrupt_event.set())
    runner.interrupt_event.clear()
    assert report.status == "interrupted" and report.executed == ["1", "2"]


def test_a_child_that_dies_fails_its_prompt_and_is_replaced(runner):
    first = runner._proc.pid
    kill = lambda node: node == "2" and os.kill(first, signal.SIGKILL)  # noqa: E731
    report, events = run(runner, slow_prompt(1024, seed=2), on_node=kill)  # outlasts the kill (see above)
    assert report.status == "error"
    assert report.error["exception_type"] == "WorkerProcessDied"
    assert "killed by signal 9" in report.error["exception_message"]

    report, _ = run(runner, image_prompt(color=8, prefix="after"))
    assert report.status == "success" and runner._proc.pid != first


def test_stop_interrupts_the_running_prompt_and_ends_the_child(tmp_path):
    """What a server shutdown does: interrupt, then close; the child exits and the prompt reports interrupted."""
    env = Environment(models_dir=str(tmp_path), input_dir=str(tmp_path), output_dir=str(tmp_path),
                      temp_dir=str(tmp_path))
    r = ProcessRunner(RunnerConfig("cpu", env, cache_entries=8, cache_bytes=1 << 20))
    result = {}
    t = threading.Thread(target=lambda: result.update(report=run(r, slow_prompt(1024, seed=3),
                                                                  on_node=lambda n: r.interrupt_event.set())[0]))
    t.start()
    t.join(patience(120))
    r.close()
    assert result["report"].status == "interrupted" and not r._proc.is_alive()


def test_serve_runs_prompts_in_a_child_process_unless_single_process(tmp_path):
    import argparse

    from server.app import Config, add_arguments, config_from_args, create_app
    from server_helpers import probe_registry

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert config_from_args(parser.parse_args([])).worker_process
    assert not config_from_args(parser.parse_args(["--single-process"])).worker_process
    with pytest.raises(ValueError, match="worker_process"):  # instrumented nodes cannot cross into a child
        create_app(Config(data_dir=tmp_path, models_dir=tmp_path, output_dir=tmp_path, input_dir=tmp_path,
                          devices=["cpu"]), probe_registry())
