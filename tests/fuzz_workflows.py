"""Seeded mutations of real workflows, and odd requests to the other routes, for the fuzz test
(tests/test_server_fuzz.py). The same seed gives the same requests, so a failure can be replayed.

Each request is (method, path, body bytes or None, content type or None). Most are /prompt submissions of a real
workflow (the shipped ones, in UI and API format, and subgraph templates) with one to three mutations: a value
replaced by a hostile one (huge, NaN, a lone surrogate, deep nesting, a wrong type), an entry removed or
duplicated, a link bent (to itself, to a missing node, to a bad slot), a cycle closed, the submission's own
fields (prompt_id, number, extra_data, targets) broken, or the JSON text itself cut or corrupted.
"""
from __future__ import annotations

import copy
import json
import random
from urllib.parse import quote

DEEP = 150  # deeper than the server's JSON nesting bound


def _deep(depth: int):
    value: list = []
    for _ in range(depth):
        value = [value]
    return value


HOSTILE = [lambda: None, lambda: True, lambda: 0, lambda: -1, lambda: 1.5, lambda: 2 ** 63, lambda: 10 ** 400,
           lambda: float("nan"), lambda: float("inf"), lambda: "", lambda: "\ud800", lambda: "\x00",
           lambda: "x" * 70_000, lambda: "../../etc/passwd", lambda: "<script>", lambda: [], lambda: {},
           lambda: [[]], lambda: {"__value__": [1]}, lambda: ["1"], lambda: ["1", 0], lambda: ["1", -1],
           lambda: ["1", 2 ** 40], lambda: ["999999", 0], lambda: [1, 0, 0], lambda: [None, 0], lambda: [True, 0],
           lambda: {"class_type": ["x"]}, lambda: {"nodes": 3}, lambda: _deep(20), lambda: _deep(DEEP),
           lambda: list(range(20_000))]


class Fuzzer:
    def __init__(self, seed: int, workflows: list[dict], prompts: list[dict], node_types: list[str]):
        """`workflows`: UI workflows; `prompts`: API prompts; `node_types`: class names to plant."""
        self.rng = random.Random(seed)
        self.workflows = [json.dumps(w) for w in workflows]  # parsed afresh for each request: a cheap deep copy
        self.prompts = [json.dumps(p) for p in prompts]
        self.node_types = node_types

    def requests(self, workflows: int, others: int):
        """`workflows` mutated /prompt submissions and `others` requests to other routes, mixed at random."""
        kinds = [True] * workflows + [False] * others
        self.rng.shuffle(kinds)
        for i, workflow in enumerate(kinds):
            yield self.submission(i) if workflow else self.other_route(i)

    # -- /prompt ------------------------------------------------------------------------------------------------
    def submission(self, i: int) -> tuple:
        rng = self.rng
        ui = rng.random() < 0.5
        graph = json.loads(rng.choice(self.workflows if ui else self.prompts))
        for _ in range(rng.randint(1, 3)):
            graph = self.mutate_graph(graph, ui)
        body = {"prompt": graph, "client_id": f"fuzz{i % 7}", "prompt_id": f"fuzz-{i}"}
        if rng.random() < 0.3:
            field = rng.choice(("prompt_id", "number", "front", "extra_data", "partial_execution_targets",
                                "client_id", "prompt"))
            body[field] = self.hostile()
        if rng.random() < 0.2:
            body["extra_data"] = {"extra_pnginfo": rng.choice(({"workflow": self.hostile()}, self.hostile()))}
        if ui and rng.random() < 0.2:
            body = graph  # a bare UI workflow as the whole body
        return "POST", "/prompt", self.encode(body), "application/json"

    def mutate_graph(self, graph, ui: bool):
        rng = self.rng
        if not isinstance(graph, dict):
            return graph
        roll = rng.random()
        if roll < 0.45:
            self.mutate_somewhere(graph)
        elif roll < 0.6:
            nodes = graph.get("nodes") if ui else graph
            return self.plant_node(graph, nodes, ui)
        elif roll < 0.8:
            self.bend_link(graph, ui)
        elif roll < 0.9 and not ui:
            self.close_cycle(graph)
        else:
            return self.hostile()
        return graph

    def mutate_somewhere(self, value) -> None:
        """Walk down a random path and change what is at its end: replace, delete, duplicate or retype."""
        rng = self.rng
        for _ in range(rng.randint(1, 6)):
            children = list(value.items()) if isinstance(value, dict) else list(enumerate(value)) \
                if isinstance(value, list) else []
            containers = [(k, v) for k, v in children if isinstance(v, (dict, list)) and v]
            if not containers or rng.random() < 0.3:
                break
            _, value = rng.choice(containers)
        if not isinstance(value, (dict, list)) or not value:
            return
        key = rng.choice(list(value)) if isinstance(value, dict) else rng.randrange(len(value))
        action = rng.random()
        if action < 0.55:
            value[key] = self.hostile()
        elif action < 0.75:
            del value[key]
        elif action < 0.9 and isinstance(value, list):
            value.insert(key, copy.deepcopy(value[key]))
        elif isinstance(value, dict):
            value[rng.choice(("class_type", "inputs", "_meta", "widget", "link", "type", "id", "mode", "nodes",
                              "links", "definitions", "widgets_values", "outputs"))] = self.hostile()

    def plant_node(self, graph: dict, nodes, ui: bool):
        rng = self.rng
        kind = rng.choice(self.node_types + ["NoSuchNode", "Reroute", "PrimitiveNode", "Note"])
        if ui and isinstance(nodes, list):
            nodes.append({"id": rng.choice((9000 + len(nodes), 1, "x")), "type": kind, "mode": rng.choice((0, 2, 4)),
                          "inputs": [{"name": "image", "type": "IMAGE", "link": rng.randint(0, 50)}],
                          "widgets_values": [self.hostile() for _ in range(rng.randint(0, 4))]})
        elif not ui:
            ids = list(graph) or ["1"]
            graph[str(rng.randint(0, 10_000))] = {"class_type": kind, "inputs": {
                rng.choice(("image", "images", "width", "samples", "model", "a")): rng.choice(
                    ([rng.choice(ids), rng.randint(-1, 3)], self.hostile()))}}
        return graph

    def bend_link(self, graph: dict, ui: bool) -> None:
        rng = self.rng
        if ui:
            links = graph.get("links")
            if isinstance(links, list) and links and isinstance(links[0], list):
                link = rng.choice(links)
                if isinstance(link, list) and len(link) > 4:
                    link[rng.choice((1, 2, 3, 4))] = rng.choice((link[3], 99999, -1, "x", None, 2 ** 70))
            return
        nodes = [n for n in graph.values() if isinstance(n, dict) and isinstance(n.get("inputs"), dict)]
        if not nodes:
            return
        node = rng.choice(nodes)
        linked = [k for k, v in node["inputs"].items() if isinstance(v, list)]
        if linked:
            ids = list(graph)
            node["inputs"][rng.choice(linked)] = [rng.choice(ids + ["missing"]), rng.choice((0, 1, 7, -3))]

    def close_cycle(self, graph: dict) -> None:
        """Point the first linked input of a random node at a node downstream of it (or at itself)."""
        rng = self.rng
        ids = [k for k, v in graph.items() if isinstance(v, dict) and isinstance(v.get("inputs"), dict)]
        if len(ids) < 2:
            return
        a, b = rng.sample(ids, 2)
        for name, value in graph[a]["inputs"].items():
            if isinstance(value, list) and len(value) == 2:
                graph[a]["inputs"][name] = [rng.choice((b, a)), 0]
                return

    def hostile(self):
        return self.rng.choice(HOSTILE)()

    def encode(self, body) -> bytes:
        """JSON text (NaN and big numbers as Python writes them), sometimes cut or corrupted."""
        text = json.dumps(body).encode()
        roll = self.rng.random()
        if roll < 0.05:
            return text[: self.rng.randrange(len(text) + 1)]
        if roll < 0.1:
            at = self.rng.randrange(len(text) + 1)
            return text[:at] + self.rng.choice((b"\xff", b"[" * 5000, b"\x00", b'"', b"}", b"NaN")) + text[at:]
        return text

    # -- other routes -------------------------------------------------------------------------------------------
    def other_route(self, i: int) -> tuple:
        rng = self.rng
        word = quote(str(self.hostile())[:200], safe="", errors="surrogatepass")
        choices = [
            ("GET", f"/view?filename={word}&type={rng.choice(('input', 'output', 'temp', word))}"
                    f"&preview={rng.choice(('webp;90', 'jpeg;²', 'png', word))}&channel={rng.choice(('a', word))}",
             None, None),
            ("GET", f"/history?max_items={word}&offset={rng.choice(('0', '-5', word))}", None, None),
            ("GET", f"/history/{word or 'x'}", None, None),
            ("POST", "/queue", self.encode({rng.choice(("delete", "requeue", "clear", "pause")): self.hostile()}),
             "application/json"),
            ("POST", "/history", self.encode({"delete": self.hostile()}), "application/json"),
            ("POST", "/interrupt", self.encode({"prompt_id": self.hostile()}), "application/json"),
            ("GET", f"/object_info/{word or 'x'}", None, None),
            ("POST", f"/userdata/{word or 'x'}", self.encode(self.hostile()), "application/json"),
            ("GET", f"/userdata/{word or 'x'}", None, None),
            ("GET", f"/api/jobs?limit={word}&status={rng.choice(('pending', word))}", None, None),
            ("GET", f"/api/jobs/{word or 'x'}", None, None),
            ("POST", "/settings", self.encode(self.hostile()), "application/json"),
            ("POST", "/upload/image", b"--b\r\nContent-Disposition: form-data; name=\"image\"; filename=\"f\x00.png\""
                                      b"\r\n\r\n" + rng.randbytes(rng.randint(0, 300)) + b"\r\n--b--\r\n",
             "multipart/form-data; boundary=b"),
            ("POST", "/prompt", rng.randbytes(rng.randint(0, 200)), "image/png"),
        ]
        return rng.choice(choices)
