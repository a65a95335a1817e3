"""The SQLite queue: order, persistence across reopen, recovery of cut-off prompts, requeue, history paging."""
from __future__ import annotations

import threading

import pytest

from server.queue import RESTART_MESSAGE, PromptQueue

P = {"1": {"class_type": "X", "inputs": {}}}


def test_order_front_and_explicit_numbers(tmp_path):
    q = PromptQueue(tmp_path / "q.db")
    assert q.put("a", P, {}, ["1"]) == 1
    assert q.put("b", P, {}, ["1"]) == 2
    assert q.put("c", P, {}, ["1"], front=True) == -3
    assert q.put("d", P, {}, ["1"], number=1.5) == 1.5
    q.put("e", P, {}, ["1"], number=2)  # tie with b: submission order decides
    assert [i.prompt_id for i in q.pending()] == ["c", "a", "d", "b", "e"]
    assert [q.take().prompt_id for _ in range(5)] == ["c", "a", "d", "b", "e"]
    assert q.take(timeout=0.01) is None
    q.close()


def test_duplicate_id_refused(tmp_path):
    q = PromptQueue(tmp_path / "q.db")
    q.put("a", P, {}, ["1"])
    try:
        q.put("a", P, {}, ["1"])
    except KeyError:
        pass
    else:
        raise AssertionError("duplicate id accepted")
    assert len(q.pending()) == 1


def test_reopen_keeps_pending_and_history_and_recovers_running(tmp_path):
    q = PromptQueue(tmp_path / "q.db")
    for pid in "abc":
        q.put(pid, P, {"client_id": "x"}, ["1"])
    running = q.take()
    done = q.take()
    q.finish(done.prompt_id, {"status_str": "success", "completed": True, "messages": []},
             {"1": {"images": [{"filename": "f.png", "subfolder": "", "type": "output"}]}}, {})
    del q  # no close: as if the process died

    q = PromptQueue(tmp_path / "q.db")
    assert q.recovered == [running.prompt_id]
    assert [i.prompt_id for i in q.pending()] == ["c"] and q.running() == []
    assert q.pending()[0].extra_data == {"client_id": "x"}
    cut = q.history_item("a")
    assert cut.status["status_str"] == "error" and cut.status["completed"] is False
    assert cut.status["messages"][0][1]["exception_message"] == RESTART_MESSAGE
    assert q.history_item("b").outputs["1"]["images"][0]["filename"] == "f.png"
    # numbers keep counting after a reopen
    assert q.put("d", P, {}, ["1"]) == 4
    # the cut-off prompt can run again, under the same id, after what is queued
    assert q.requeue(["a"]) == [] and q.requeue(["a", "zzz"]) == ["a", "zzz"]
    assert [i.prompt_id for i in q.pending()] == ["c", "d", "a"]
    assert q.history_item("a") is None


def test_history_paging_and_deletes(tmp_path):
    q = PromptQueue(tmp_path / "q.db")
    for i in range(5):
        q.put(str(i), P, {}, ["1"])
        q.take()
        q.finish(str(i), {"status_str": "success", "completed": True, "messages": []}, {}, {})
    ids = lambda entries: [e.item.prompt_id for e in entries]  # noqa: E731
    assert ids(q.history()) == ["0", "1", "2", "3", "4"]
    assert ids(q.history(2)) == ["3", "4"]
    assert ids(q.history(2, 1)) == ["1", "2"]
    assert ids(q.history(10, 3)) == ["3", "4"]
    assert q.history()[0].as_dict()["prompt"] == [1, "0", P, {}, ["1"]]
    assert q.delete(["1", "9"], "done") == 1
    assert q.delete(["2"], "pending") == 0
    assert q.clear("done") == 4 and q.history() == []


def test_pause_blocks_take_and_wake_releases(tmp_path):
    q = PromptQueue(tmp_path / "q.db")
    q.set_paused(True)
    q.put("a", P, {}, ["1"])
    assert q.take(timeout=0.01) is None and q.remaining() == 1
    got = []
    t = threading.Thread(target=lambda: got.append(q.take(timeout=5)))
    t.start()
    q.set_paused(False)
    t.join(5)
    assert got[0].prompt_id == "a" and q.state_of("a") == "running"
    q.close()


def test_release_puts_a_running_prompt_back_in_its_place(tmp_path):
    q = PromptQueue(tmp_path / "q.db")
    q.put("a", P, {}, ["1"])
    q.put("b", P, {}, ["1"])
    assert q.take().prompt_id == "a"
    q.release("a")
    assert [i.prompt_id for i in q.pending()] == ["a", "b"] and q.running() == []


def test_group_commit_is_durable_only_after_commit(tmp_path):
    """add() prompts share one transaction: another connection (a restarted server) sees them only once commit()
    ran, and only then are they numbered and pending."""
    import sqlite3

    q = PromptQueue(tmp_path / "q.sqlite3")
    other = sqlite3.connect(tmp_path / "q.sqlite3")

    def on_disk():
        return [r[0] for r in other.execute("SELECT prompt_id FROM prompts ORDER BY seq")]

    a, b = q.add("a", P, {}, ["1"]), q.add("b", P, {}, ["1"])
    assert on_disk() == [] and q.pending() == [] and a.number is None
    assert q.commit() == 2
    assert on_disk() == ["a", "b"] and (a.number, b.number) == (1, 2)
    c, again_a, again_c, d = (q.add(pid, P, {}, ["1"]) for pid in ("c", "a", "c", "d"))
    assert q.commit() == 2  # ids already queued or earlier in the group are refused alone; the group stays
    assert [t.duplicate for t in (c, again_a, again_c, d)] == [False, True, True, False]
    assert on_disk() == ["a", "b", "c", "d"]
    q.close()


def test_two_processes_share_the_queue(tmp_path):
    """Two queues on one file (the primary and an HTTP process of ``serve --http-processes``): numbers keep rising
    across both, an id stored by the other one between add() and commit() is reported as a duplicate of that group
    only, pause is shared, and only the owner recovers cut-off prompts."""
    primary = PromptQueue(tmp_path / "q.sqlite3")
    primary.put("a", P, {}, ["1"])
    assert primary.take(timeout=0).prompt_id == "a"  # running in the primary
    http = PromptQueue(tmp_path / "q.sqlite3", owner=False)
    assert http.recovered == [] and http.state_of("a") == "running"
    assert http.put("b", P, {}, ["1"]) == 2
    late = http.add("c", P, {}, ["1"])
    ok = http.add("d", P, {}, ["1"])
    assert primary.put("c", P, {}, ["1"]) == 3  # stored first by the primary, before the group's commit
    assert http.commit() == 1
    assert late.duplicate and late.number is None and not ok.duplicate and ok.number == 5
    assert primary.put("e", P, {}, ["1"], front=True) == -6
    http.set_paused(True)
    assert primary.paused and primary.take(timeout=0) is None
    http.set_paused(False)
    assert [primary.take(timeout=0).prompt_id for _ in range(4)] == ["e", "b", "c", "d"]
    http.set_paused(True)
    http.close()
    primary.close()
    restarted = PromptQueue(tmp_path / "q.sqlite3")  # a pause does not outlive the server
    assert sorted(restarted.recovered) == ["a", "b", "c", "d", "e"] and not restarted.paused
    assert restarted.put("f", P, {}, ["1"]) == 7
    restarted.close()


def test_a_batched_prompt_wakes_a_worker_only_once_committed(tmp_path):
    import time

    q = PromptQueue(tmp_path / "q.sqlite3")
    taken = []
    worker = threading.Thread(target=lambda: taken.append(q.take(timeout=30)))
    worker.start()
    time.sleep(0.2)
    q.add("z", P, {}, ["1"])
    time.sleep(0.3)
    assert taken == []  # not on disk yet: the waiting worker was not woken
    q.commit()
    worker.join(5)
    assert [i.prompt_id for i in taken] == ["z"]
    q.close()
