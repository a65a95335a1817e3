"""The aiohttp application: configuration, the shared state the routes use, startup and shutdown.

``latentgraph serve`` calls :func:`add_arguments` to build its parser and :func:`run` to start. Tests build the
app with :func:`create_app` and a :class:`Config`.
"""
from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import gc
import logging
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from nodes import catalog

from . import canvas_lib, frontend_compat, routes
from .cli import add_models_argument
from .cluster import Cluster, PrimaryLink
from .limits import MAX_BODY_BYTES, MAX_UPLOAD_BYTES, READ_TIMEOUT
from .queue import PromptQueue
from .security import allowed_hosts, is_loopback, make_middlewares
from .watchdog import LIMIT as WATCHDOG_LIMIT
from .worker import Worker
from .ws import Hub

log = logging.getLogger("latentgraph.server")

REPO = Path(__file__).resolve().parent.parent
BUNDLE = Path(__file__).resolve().parent / "bundle"  # web/ and workflows/ as `pip install .` packs them (canvas_lib)
TOKEN_ENV = "LATENTGRAPH_TOKEN"
GC_YOUNG_THRESHOLD = 20_000  # container allocations between young collections; see settle_gc
STATUS_INTERVAL = 0.05  # seconds between queue-change statuses; see State.queue_changed
HEAVY_THREADS = 2  # large graphs and image work run on this many threads beside the event loop
STOP_GRACE = 10.0  # seconds a stopping server waits for a running prompt to heed the interrupt; see Worker.finish


@dataclass
class Config:
    host: str = "127.0.0.1"
    port: int = 8188
    models_dir: Path = Path("models")
    output_dir: Path = Path("output")
    input_dir: Path = Path("input")
    data_dir: Path = Path("data")
    token: str | None = None
    debug: bool = False
    devices: list[str] = field(default_factory=lambda: ["auto"])
    max_upload_bytes: int = MAX_UPLOAD_BYTES
    max_body_bytes: int = MAX_BODY_BYTES
    read_timeout: float = READ_TIMEOUT  # a client silent this long mid-request (headers or body) is cut off
    allow_hosts: list[str] = field(default_factory=list)  # Host names answered besides loopback and --host
    watchdog_seconds: float = WATCHDOG_LIMIT  # a worker process without a heartbeat this long is replaced
    web_dir: Path = field(default_factory=lambda: shipped("web"))
    workflows_dir: Path = field(default_factory=lambda: shipped("workflows"))
    cache_entries: int = 256
    cache_bytes: int = 4 * 1024 ** 3
    worker_process: bool = True  # run prompts in a child process per device (see runners.py)
    http_processes: int = 1  # processes answering HTTP on the same port (see cluster.py)

    @property
    def temp_dir(self) -> Path:
        return self.data_dir / "temp"


def shipped(name: str) -> Path:
    """A folder that ships with latentgraph: the source checkout's, else the installed package's copy."""
    return REPO / name if (REPO / name).is_dir() else BUNDLE / name


class State:
    """What the routes share: config, node registry, queue, websocket hub, workers."""

    def __init__(self, config: Config, registry: dict | None = None, primary: PrimaryLink | None = None):
        """``primary`` is given in an extra HTTP process (cluster.py): the link to the process with the workers."""
        from nodes.node import Environment, load_builtin_nodes

        if registry is not None and (config.worker_process or config.http_processes > 1):
            raise ValueError("a registry passed to create_app exists only in this process: "
                             "set Config.worker_process = False and http_processes = 1 to run its nodes")
        self.config = config
        self.primary = primary
        self.cluster: Cluster | None = None
        self.stopping = False
        # temp/ holds PreviewImage files and temp uploads for the session that made them; as in ComfyUI, a
        # (re)start begins with it empty so it cannot grow without bound
        if primary is None:
            shutil.rmtree(config.temp_dir, ignore_errors=True)
        for d in (config.models_dir, config.output_dir, config.input_dir, config.data_dir, config.temp_dir):
            Path(d).mkdir(parents=True, exist_ok=True)
        self.env = Environment(models_dir=str(config.models_dir), input_dir=str(config.input_dir),
                               output_dir=str(config.output_dir), temp_dir=str(config.temp_dir))
        self.registry = registry if registry is not None else load_builtin_nodes()
        self.queue = PromptQueue(Path(config.data_dir) / "queue.sqlite3", owner=primary is None)
        if self.queue.recovered:
            log.warning("%d prompt(s) were running when the server stopped; they are in history as %r and can be "
                        "re-queued with POST /queue {\"requeue\": [ids]}: %s", len(self.queue.recovered),
                        "interrupted by server restart", ", ".join(self.queue.recovered))
        self.hub = Hub()
        self.hub.on_connect = self._on_connect
        self._status_timer: asyncio.TimerHandle | None = None
        self._status_sent = float("-inf")  # event-loop time of the last queue-change status
        self._commit: asyncio.Future | None = None
        self.heavy = concurrent.futures.ThreadPoolExecutor(HEAVY_THREADS, thread_name_prefix="latentgraph-heavy")
        self.workers = [] if primary else [self._make_worker(d) for d in resolve_devices(config.devices)]

    def _make_worker(self, device: str) -> Worker:
        from .runners import ProcessRunner, RunnerConfig, ThreadRunner

        config = RunnerConfig(device, self.env, self.config.cache_entries, self.config.cache_bytes,
                              watchdog_seconds=self.config.watchdog_seconds)
        runner = ProcessRunner(config) if self.config.worker_process else ThreadRunner(config, self.registry)
        return Worker(device, self.queue, runner, self.hub, on_queue_change=self.status_changed)

    # -- what the workers do: here, or in the primary process for an extra HTTP process --------------
    async def interrupt(self, prompt_id: str | None = None) -> bool:
        """Interrupt the running prompt (only if it is ``prompt_id``, when given); whether one was."""
        if self.primary:
            return await self.primary.call("interrupt", prompt_id)
        return any([w.interrupt(prompt_id) for w in self.workers])

    async def free(self, unload_models: bool, free_memory: bool) -> None:
        if self.primary:
            return await self.primary.call("free", unload_models, free_memory)
        for w in self.workers:
            w.request_free(unload_models, free_memory)

    async def devices(self) -> list[dict]:
        """/system_stats' device entries."""
        if self.primary:
            return await self.primary.call("devices")
        return [{"name": w.runner.device, "type": w.runner.device.split(":")[0], "index": 0,
                 "vram_total": 0, "vram_free": 0, "torch_vram_total": 0, "torch_vram_free": 0,
                 "models": None, "cache": None, **w.runner.stats()}  # a child not started yet has no numbers
                for w in self.workers]

    async def heavy_work(self, fn, *args):
        """``fn(*args)`` on a thread of the heavy pool: work that would stall every client if it ran on the event
        loop (large graphs, image decoding). A few threads bound the memory that many such requests at once take;
        the rest wait their turn."""
        return await asyncio.get_running_loop().run_in_executor(self.heavy, fn, *args)

    # -- group commit -------------------------------------------------------------------------
    async def committed(self) -> None:
        """Wait until every ``queue.add`` made so far is on disk. Submissions handled in the same event-loop
        iteration share one commit, scheduled after them."""
        if self._commit is None:
            self._commit = asyncio.get_running_loop().create_future()
            self._commit.get_loop().call_soon(self._flush_commit)
        await asyncio.shield(self._commit)

    def _flush_commit(self) -> None:
        done, self._commit = self._commit, None
        try:
            self.queue.commit()
            done.set_result(None)
        except Exception as exc:  # each waiting handler answers with the error; nothing unacknowledged is lost
            done.set_exception(exc)

    # -- status broadcasts --------------------------------------------------------------------
    def status_payload(self) -> dict:
        return {"status": {"exec_info": {"queue_remaining": self.queue.remaining()}}}

    def queue_changed(self) -> None:
        """Prompts were queued, deleted or re-queued, or the queue paused: tell every client. The first change
        after a quiet STATUS_INTERVAL goes out on the event loop's next turn; the changes in the interval after
        it are coalesced into one message at its end, with the count read then. Clients only show the number,
        and a burst of 200 submissions would otherwise send 50 sockets 200 redundant frames (costing the event
        loop, and every client, more than the submissions themselves). An extra HTTP process tells the primary,
        which wakes its workers and sends the status to the clients of every process."""
        if self.primary:
            return self.primary.notify("queue_changed")
        if self._status_timer is None:
            loop = self.hub.loop
            delay = max(0.0, self._status_sent + STATUS_INTERVAL - loop.time())
            self._status_timer = loop.call_later(delay, self._send_status)

    def _send_status(self) -> None:
        self._status_timer = None
        self._status_sent = self.hub.loop.time()
        self.hub.send("status", self.status_payload())

    def status_changed(self) -> None:
        """Called from worker threads when a prompt ends: sent at once, before that prompt's final message."""
        self.hub.call_threadsafe(self._send_status_now)

    def _send_status_now(self) -> None:
        if not self.stopping:  # the queue it counts may be closed
            self.hub.send("status", self.status_payload())

    def _on_connect(self, sid: str) -> list:
        msgs = [("status", {**self.status_payload(), "sid": sid})]
        if self.primary and sid in self.primary.executing:
            msgs.append(("executing", self.primary.executing[sid]))
        for w in self.workers:  # a client reconnecting mid-prompt learns which node runs
            item = w.current
            if item is not None and item.extra_data.get("client_id") == sid and w.current_node is not None:
                msgs.append(("executing", {"node": w.current_node, "display_node": w.current_node,
                                           "prompt_id": item.prompt_id}))
        return msgs

    # -- lifecycle ----------------------------------------------------------------------------
    async def start(self, app: web.Application) -> None:
        self.hub.loop = asyncio.get_running_loop()
        log.debug("event loop: %s", type(self.hub.loop).__module__)
        if self.primary:
            await self.primary.start(self.hub)
        for w in self.workers:
            w.start()
        if self.primary is None and self.config.http_processes > 1:
            self.cluster = Cluster(self, self.config.http_processes)
            await self.cluster.start()

    async def close_sockets(self, app: web.Application) -> None:
        await self.hub.close_all()

    async def stop(self, app: web.Application) -> None:
        self.stopping = True
        if self.cluster is not None:
            await self.cluster.stop()
        if self._status_timer is not None:  # its queue count would read a closed database
            self._status_timer.cancel()
        for w in self.workers:
            w.stop()
        for w in self.workers:  # a worker records its last prompt before the queue closes, however long it takes
            await asyncio.to_thread(w.finish, STOP_GRACE)
        await asyncio.to_thread(self.heavy.shutdown, True, cancel_futures=True)  # its work may add to the queue
        self.queue.close()


STATE = web.AppKey("latentgraph_state", State)


def resolve_devices(devices: list[str]) -> list[str]:
    """``auto`` means every CUDA device (one worker each), else the CPU."""
    if devices != ["auto"]:
        return devices
    import torch

    if torch.cuda.is_available():
        return [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    return ["cpu"]


def create_app(config: Config, registry: dict | None = None, primary: PrimaryLink | None = None) -> web.Application:
    """The application; `registry` overrides the built-in nodes (tests add instrumented ones); `primary` makes it
    an extra HTTP process (cluster.py)."""
    app = web.Application(middlewares=make_middlewares(config.token, config.debug, allowed_hosts(config)),
                          client_max_size=config.max_body_bytes)
    state = State(config, registry, primary)
    app[STATE] = state
    frontend_compat.setup(app, state)  # routes the official ComfyUI frontend needs; before the static catch-all
    routes.setup(app, state)
    app.on_startup.append(state.start)
    app.on_shutdown.append(state.close_sockets)  # before aiohttp waits for open handlers, websockets among them
    app.on_cleanup.append(state.stop)
    return app


# -- the `latentgraph serve` command --------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback only)")
    parser.add_argument("--port", type=int, default=8188)
    add_models_argument(parser)
    parser.add_argument("--output", default="output", help="where saved images go")
    parser.add_argument("--input", default="input", help="where uploaded/loadable images live")
    parser.add_argument("--data", default="data", help="queue and history database, previews, settings")
    parser.add_argument("--token", default=None,
                        help=f"require this token on every request (default: ${TOKEN_ENV}); "
                             "mandatory when --host is not a loopback address")
    parser.add_argument("--device", action="append", dest="devices",
                        help="compute device(s), e.g. cuda:0 (repeatable; default: every GPU, else cpu)")
    parser.add_argument("--max-upload-mb", type=int, default=MAX_UPLOAD_BYTES >> 20, help="largest accepted upload")
    parser.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                        help="also answer requests whose Host header is NAME (repeatable; by default only loopback "
                             "names and --host are answered, which stops DNS-rebinding pages)")
    parser.add_argument("--watchdog", type=float, default=WATCHDOG_LIMIT, metavar="SECONDS",
                        help="kill and replace a worker process that gives no sign of life for this long, failing its "
                             f"prompt (default {WATCHDOG_LIMIT:g}; 0: never)")
    parser.add_argument("--read-timeout", type=float, default=READ_TIMEOUT, metavar="SECONDS",
                        help=f"disconnect a client that sends nothing for this long mid-request (default "
                             f"{READ_TIMEOUT:g})")
    parser.add_argument("--no-demo-models", action="store_true",
                        help="do not write the random-weight demo checkpoints when no checkpoint exists")
    parser.add_argument("--debug", action="store_true", help="send tracebacks to clients; verbose logs")
    parser.add_argument("--single-process", action="store_true",
                        help="run prompts on a thread of the server process instead of a child process per device "
                             "(for debugging nodes; HTTP then waits on the nodes' Python)")
    parser.add_argument("--http-processes", type=int, default=1, metavar="N",
                        help="answer HTTP and websockets in N processes sharing the port (for many concurrent "
                             "clients; default 1)")
    frontend_compat.add_arguments(parser)  # --frontend latentgraph|comfyui


def config_from_args(args: argparse.Namespace) -> Config:
    token = args.token or os.environ.get(TOKEN_ENV) or None
    config = Config(host=args.host, port=args.port, models_dir=Path(args.models), output_dir=Path(args.output),
                    input_dir=Path(args.input), data_dir=Path(args.data), token=token, debug=args.debug,
                    devices=args.devices or ["auto"], max_upload_bytes=args.max_upload_mb * 1024 * 1024,
                    worker_process=not args.single_process, http_processes=args.http_processes,
                    read_timeout=args.read_timeout, allow_hosts=args.allow_host, watchdog_seconds=args.watchdog)
    return frontend_compat.configure(config, args)  # --frontend comfyui serves the official frontend's files


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    logging.basicConfig(level=logging.DEBUG if config.debug else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not is_loopback(config.host) and not config.token:
        print(f"refusing to listen on {config.host} without a token: pass --token or set ${TOKEN_ENV} "
              "(or bind 127.0.0.1)", file=sys.stderr)
        return 2
    if config.http_processes < 1:
        print("--http-processes must be at least 1", file=sys.stderr)
        return 2
    if not args.no_demo_models:
        ensure_demo_models(config.models_dir / "checkpoints")
        catalog.ensure_demo_upscaler(config.models_dir / "upscale_models")
    # The worker threads (and with --single-process the nodes themselves) run Python beside the event loop; a
    # shorter GIL switch interval keeps the loop's wake-ups (HTTP, websocket fan-out) prompt while they do.
    sys.setswitchinterval(0.001)
    app = create_app(config)
    settle_gc()
    where = f"http://{config.host}:{config.port}/"
    if reason := canvas_lib.missing(config.web_dir):
        log.warning("the page at %s cannot show the canvas: %s", where, reason)
    log.info("latentgraph serving %s%s", where, " (token required: open /?token=<token> once)" if config.token else "")
    # aiohttp closes a connection that has not sent a whole request by the keep-alive deadline, set when it opens
    # and after each response: so it is also the timeout for the headers of each request
    web.run_app(app, host=config.host, port=config.port, print=None, access_log=None, loop=new_event_loop(),
                reuse_port=config.http_processes > 1, keepalive_timeout=config.read_timeout)
    return 0


def settle_gc() -> None:
    """Tune the cyclic GC for serving, once startup is done (here and in each extra HTTP process).

    Everything imported and built so far (torch, the node registry: ~200,000 objects) lives as long as the
    server. Frozen, the GC stops re-walking it: a full collection then costs microseconds instead of ~45 ms of
    stalled HTTP and websocket traffic. A request makes few reference cycles but holds ~100 container objects
    while in flight; at Python's default of a young collection per 700 of them, a burst of 100 requests per
    process set off ~13 young collections and one or two older ones, each scanning objects still in use. At
    20,000 a burst sets off none (measured on 200-submission bursts: 4-5% less event-loop CPU, p99 ~7% lower),
    and the cycles that do form wait for at most that many allocations, a few MB."""
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD)


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop where it exists: the same asyncio API with its I/O, timers and transports written in C, which
    roughly halves the event loop's own time per request."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def ensure_demo_models(checkpoints: Path) -> None:
    """Without any checkpoint, nodes/ writes its demo models so every workflow can run (as noise)."""
    warning = catalog.ensure_demo_models(checkpoints)
    if warning:
        log.warning("%s", warning)
