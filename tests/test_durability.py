"""kill -9 a live server with prompts queued and one running; restart it on the same --data: nothing is lost."""
from __future__ import annotations

import os
import signal
import urllib.request
from pathlib import Path

from patience import patience, wait_until
from server_helpers import free_port, http_json, image_prompt, slow_prompt, start_server

from server.runners import EXECUTOR_NICE


def children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def alive(pid: int) -> bool:
    """Running or sleeping; a zombie (dead, waiting for init to reap it) does not count."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


def test_kill_9_loses_no_queued_prompt(tmp_path):
    port = free_port()
    proc = start_server(tmp_path, port, unset=("OMP_NUM_THREADS",))  # the suite's one thread (conftest) left out
    try:
        # one prompt finishes before the crash: its image must stay viewable afterwards
        done = http_json(port, "/prompt", {"prompt": image_prompt(prefix="before")})["prompt_id"]
        wait_until(lambda: done in http_json(port, f"/history/{done}"))
        # prompts compute on every core (runners.use_every_core)
        assert http_json(port, "/system_stats")["devices"][0]["torch_threads"] == len(os.sched_getaffinity(0))
        image = http_json(port, f"/history/{done}")[done]["outputs"]["9"]["images"][0]

        slow = http_json(port, "/prompt", {"prompt": slow_prompt(2048)})["prompt_id"]
        wait_until(lambda: [i[1] for i in http_json(port, "/queue")["queue_running"]] == [slow], every=0.02)
        http_json(port, "/queue", {"pause": True})  # whatever the machine's speed, the rest stays queued
        queued = [http_json(port, "/prompt", {"prompt": image_prompt(color=i, prefix=f"q{i}")})["prompt_id"]
                  for i in range(5)]
        queued.append(http_json(port, "/prompt", {"prompt": image_prompt(color=99, prefix="front"),
                                                  "front": True})["prompt_id"])
        queue = http_json(port, "/queue")
        assert [i[1] for i in queue["queue_pending"]] == [queued[-1]] + queued[:-1]
        assert [i[1] for i in queue["queue_running"]] == [slow]  # still running when the process dies
        executors = children(proc.pid)  # the worker process running the slow prompt
        assert executors
        # it runs a short priority gap below HTTP (runners.lower_priority); multiprocessing's resource tracker does not
        ours = os.getpriority(os.PRIO_PROCESS, 0)
        assert sorted(os.getpriority(os.PRIO_PROCESS, pid) for pid in executors) == [ours, ours + EXECUTOR_NICE]
        assert {os.sched_getscheduler(pid) for pid in executors} == {os.SCHED_OTHER}
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(patience(10))
    assert proc.returncode == -signal.SIGKILL
    # it dies with the server: no orphan goes on running a prompt the restarted server will run again
    wait_until(lambda: not any(alive(pid) for pid in executors), 2)

    proc = start_server(tmp_path, port, log_name="server2.log")
    try:
        # every queued prompt is there (in the same order; a restart is not paused) and all of them run
        wait_until(lambda: all(pid in http_json(port, f"/history/{pid}") for pid in queued))
        history = http_json(port, "/history")
        for pid in queued:
            assert history[pid]["status"]["status_str"] == "success", history[pid]["status"]
        finish_order = [pid for pid in history if pid in queued]
        assert finish_order == [queued[-1]] + queued[:-1]

        # the prompt that was running is reported as cut off by the restart, and can be re-queued
        cut = history[slow]["status"]
        assert cut["status_str"] == "error" and cut["completed"] is False
        assert cut["messages"][-1][1]["exception_message"] == "interrupted by server restart"
        assert "interrupted by server restart" in (tmp_path / "server2.log").read_text()
        http_json(port, "/queue", {"requeue": [slow]})
        wait_until(lambda: http_json(port, f"/history/{slow}").get(slow, {}).get("status", {}).get("completed"))

        # the output from before the crash is still listed and viewable
        assert history[done]["outputs"]["9"]["images"][0] == image
        url = f"http://127.0.0.1:{port}/view?filename={image['filename']}&subfolder={image['subfolder']}&type=output"
        with urllib.request.urlopen(url) as resp:
            assert resp.status == 200 and resp.read(8) == b"\x89PNG\r\n\x1a\n"
    finally:
        proc.terminate()
        proc.wait(patience(20))
