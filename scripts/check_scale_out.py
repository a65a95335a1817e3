#!/usr/bin/env python3
"""Check a `latentgraph serve --ray` deployment from outside, as a client: list its actors, run small prompts
(no model needed) until every actor has run one, and fetch each output through /view.

    python3 scripts/check_scale_out.py http://HEAD:8188 [--token T] [--actors N] [--timeout 600]

Prints one line per actor (node, pid, device, how files reach it, resident models) and one per prompt (the actor
that ran it and the reason routing gave); exits 0 when every prompt succeeded and every output came back, 1
otherwise. Standard library only: it runs anywhere Python 3 does.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.parse
import urllib.request
import uuid


class Client:
    def __init__(self, base: str, token: str | None):
        self.base, self.token = base.rstrip("/"), token

    def call(self, path: str, body=None, raw: bool = False):
        request = urllib.request.Request(self.base + path, data=None if body is None else json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"} if body is not None else {})
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        with urllib.request.urlopen(request, timeout=60) as response:
            data = response.read()
        return data if raw else json.loads(data)


def tiny_prompt(i: int) -> dict:
    return {"1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1,
                                                         "color": (i * 0x3F1A2B) % 0xFFFFFF}},
            "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "scale_out_check"}}}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("server", help="the server's URL, e.g. http://127.0.0.1:8188")
    p.add_argument("--token", help="the server's --token, if it has one")
    p.add_argument("--actors", type=int, help="how many actors there should be (default: what the server lists)")
    p.add_argument("--timeout", type=float, default=600, help="seconds to wait for the actors and the prompts")
    args = p.parse_args()
    client = Client(args.server, args.token)
    deadline = time.time() + args.timeout

    while True:  # the server may still be starting, and its actors start (Ray places them) after it answers
        try:
            devices = client.call("/system_stats")["devices"]
        except OSError as exc:  # not listening yet
            if time.time() > deadline:
                print(f"no answer from {args.server}: {exc}")
                return 1
            time.sleep(1)
            continue
        if "worker" not in (devices[0] if devices else {}):
            print("this server does not run prompts on Ray (start it with --ray)")
            return 1
        if all(d.get("ready") for d in devices) and len(devices) >= (args.actors or 1):
            break
        if time.time() > deadline:
            print(f"actors not ready after {args.timeout:.0f} s: "
                  + ", ".join(f"{d['worker']} ready={d.get('ready')}" for d in devices))
            return 1
        time.sleep(1)
    for d in devices:
        files = ", ".join(f"{k} {v}" for k, v in d.get("files", {}).items())
        print(f"actor {d['worker']}: node {d['node']} pid {d['pid']} {d['device']}; files: {files}; "
              f"resident: {', '.join(d.get('resident') or {}) or 'nothing'}")

    ran: dict[str, str] = {}
    failures = 0
    batch = 0
    while set(ran.values()) != {d["worker"] for d in devices} and time.time() < deadline:
        ids = [client.call("/prompt", {"prompt": tiny_prompt(batch * len(devices) + i),
                                       "client_id": f"check-{uuid.uuid4().hex[:8]}"})["prompt_id"]
               for i in range(len(devices))]
        batch += 1
        while not all(client.call(f"/history/{pid}") for pid in ids):
            if time.time() > deadline:
                print("prompts did not finish in time")
                return 1
            time.sleep(0.2)
        for pid in ids:
            entry = client.call(f"/history/{pid}")[pid]
            meta = entry.get("meta", {})
            if not entry["status"].get("completed"):
                failures += 1
                print(f"prompt {pid}: FAILED on {meta.get('worker')}: {entry['status']}")
                continue
            image = entry["outputs"]["2"]["images"][0]
            data = client.call("/view?" + urllib.parse.urlencode(image), raw=True)
            ok = data[:8] == b"\x89PNG\r\n\x1a\n"
            failures += not ok
            ran[pid] = meta.get("worker")
            print(f"prompt {pid}: {meta.get('worker')} ({meta.get('route_reason')}); "
                  f"{image['filename']} {'served' if ok else 'NOT served'} by /view ({len(data)} bytes)")
    missing = {d["worker"] for d in devices} - set(ran.values())
    if missing:
        print(f"no prompt reached {', '.join(sorted(missing))} before the timeout")
    print("OK" if not failures and not missing else "FAILED")
    return 1 if failures or missing else 0


if __name__ == "__main__":
    sys.exit(main())
