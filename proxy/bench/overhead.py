"""``memproxy bench overhead``: what the proxy adds to a call, plain and streamed, and what recall adds.

The emulator answers directly, then through memproxy (and through LiteLLM's proxy with
``--compare litellm``, or another memproxy checkout with ``--compare DIR``: an older commit's
worktree, for a paired before/after), at concurrency 1 and at ``-c``, in one run: each row is one server, and
"added" is its percentile minus the emulator's own. Load comes from wrk when installed (its Lua
script makes every recall call ask a different question, so the query-embedding cache never
answers), else from the lean generator of :mod:`proxy.bench.load`. The time to the first event of
a stream, which wrk cannot see, is always measured with the latter. "CPU/req" is the CPU time the
server's processes spent per call during the run, the figure least disturbed by a busy machine.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from proxy.bench.harness import child_server, free_port, ms, print_notes, print_table
from proxy.bench.load import Plan, Result, Runner, Server, run_python, runner

MODEL = "gpt-4o-mini"
HEADERS = {"authorization": "Bearer sk-bench", "content-type": "application/json"}
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "Say hello to the benchmark."}]}
WARMUP_SECONDS = 1.0
LITELLM_KEY = "sk-bench-litellm-master-key-0123456789"  # LiteLLM refuses to start without a strong one


def chat_plan(server: Server, stream: bool) -> Plan:
    body = {**CHAT, "stream": True} if stream else CHAT
    return Plan("/v1/chat/completions", server.headers, body=json.dumps(body).encode(), stream=stream)


COLUMNS = [
    "scenario",
    "conc",
    "server",
    "p50",
    "p95",
    "p99",
    "added p50",
    "added p95",
    "added p99",
    "rps",
    "TTFE p50",
    "added TTFE p50",
    "CPU/req",
    "errors",
]


@dataclass
class Cell:
    result: Result
    cpu_per_request: float
    first_event: float | None


class Bench:
    """Runs cells (one plan, one server, one concurrency) with progress, and makes the table's rows."""

    def __init__(self, run: Runner, seconds: float, progress: Progress) -> None:
        self.run, self.seconds, self.progress = run, seconds, progress
        self.task = progress.add_task("starting", total=None)

    def cell(self, label: str, server: Server, plan: Plan, concurrency: int, *, runner: Runner | None = None) -> Cell:
        run = runner or self.run
        self.progress.update(self.task, description=f"{label} c={concurrency}: {server.name}")
        if not plan.paths:  # a plan whose paths are used once has no calls to spare for a warm-up
            run(server.child.url, plan, concurrency, min(WARMUP_SECONDS, self.seconds / 2))
        before = server.child.cpu_seconds()
        result = run(server.child.url, plan, concurrency, self.seconds)
        cpu = (server.child.cpu_seconds() - before) / max(result.requests, 1)
        first = result.first_event_p50
        if first is None and plan.stream:  # wrk cannot see the first event
            first = run_python(server.child.url, plan, concurrency, max(1.0, self.seconds / 2)).first_event_p50
        self.progress.advance(self.task)
        return Cell(result, cpu, first)

    def rows(
        self, label: str, concurrency: int, servers: list[Server], plan: Callable[[Server], Plan], **options: Runner
    ) -> list[list[str]]:
        """The first server is the baseline (the emulator): the others' "added" columns are against it."""
        cells = [(server, self.cell(label, server, plan(server), concurrency, **options)) for server in servers]
        base = cells[0][1]
        rows = []
        for server, cell in cells:
            result, direct = cell.result, base.result
            added = [ms(getattr(result, q) - getattr(direct, q)) for q in ("p50", "p95", "p99")]
            if server is servers[0]:
                added = ["", "", ""]
            first = ms(cell.first_event) if cell.first_event is not None else "-"
            added_first = "-"
            if cell.first_event is not None and base.first_event is not None and server is not servers[0]:
                added_first = ms(cell.first_event - base.first_event)
            rows.append(
                [
                    label,
                    str(concurrency),
                    server.name,
                    ms(result.p50),
                    ms(result.p95),
                    ms(result.p99),
                    *added,
                    f"{result.rps:.0f}",
                    first,
                    added_first,
                    ms(cell.cpu_per_request),
                    str(result.errors),
                ]
            )
        return rows


def litellm_config(directory: Path, upstream: str) -> Path:
    """A LiteLLM proxy config with one model, served by the emulator."""
    path = directory / "litellm.yaml"
    path.write_text(
        "model_list:\n"
        f"  - model_name: {MODEL}\n"
        "    litellm_params:\n"
        f"      model: openai/{MODEL}\n"
        f"      api_base: {upstream}\n"
        "      api_key: sk-bench\n"
        "litellm_settings:\n"
        "  telemetry: false\n"
    )
    return path


def find_litellm(binary: str | None) -> str | None:
    return shutil.which(binary or "litellm")


@contextlib.contextmanager
def litellm_server(binary: str, upstream: str) -> Iterator[Server]:
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="memproxy-litellm-") as directory:
        config = litellm_config(Path(directory), upstream)
        args = ["--config", str(config), "--host", "127.0.0.1", "--port", str(port), "--num_workers", "1"]
        env = {"LITELLM_MASTER_KEY": LITELLM_KEY, "LITELLM_LOG": "ERROR", "LITELLM_TELEMETRY": "False"}
        log = Path(directory) / "litellm.log"
        with child_server(args, port, env=env, log=log, command=[binary], timeout=180) as child:
            headers = {**HEADERS, "authorization": f"Bearer {LITELLM_KEY}"}
            yield Server("litellm", child, headers)


def run(
    seconds: float,
    concurrency: int,
    memories: int = 0,
    *,
    load: str = "auto",
    compare: list[str] | None = None,
    litellm_bin: str | None = None,
) -> None:
    levels = sorted({1, concurrency})
    run_load = runner(load)
    generator = "wrk" if run_load is not run_python else "the Python generator"
    litellm = None
    checkouts = [Path(name) for name in compare or [] if name != "litellm"]
    if "litellm" in (compare or []):
        litellm = find_litellm(litellm_bin)
        if litellm is None:
            raise SystemExit("--compare litellm: no litellm found (install it, or name it with --litellm-bin)")
    console = Console(stderr=True)
    columns = (SpinnerColumn(), TextColumn("{task.description}"), TextColumn("{task.completed} cells"))
    with Progress(*columns, TimeElapsedColumn(), console=console, transient=True) as progress:
        bench = Bench(run_load, seconds, progress)
        rows = _forwarding(bench, levels, litellm, checkouts)
        recall_rows: list[list[str]] = []
        summary = ""
        if memories:
            from proxy.bench.injection import run as run_injection

            recall_rows, summary = run_injection(memories, levels, bench.rows, seconds)
    title = f"memproxy bench overhead: forwarding ({seconds:g} s per cell, {generator}; milliseconds)"
    print_table(title, COLUMNS, rows)
    if recall_rows:
        print_table(f"memproxy bench overhead: recall + injection ({summary}; milliseconds)", COLUMNS, recall_rows)
    print_notes(
        [
            (
                "added = the server's percentile minus the emulator's (direct) in the same run; TTFE = time to a "
                "stream's first event (the Python generator); CPU/req = the server processes' CPU time per call."
            ),
            (
                "The load generator, the servers and the emulator share this machine's cores: on a busy machine the "
                "latencies move from run to run, CPU/req much less."
            ),
        ]
    )


def checkout_name(directory: Path) -> str:
    """``memproxy@<short commit>`` for a git checkout, else ``memproxy@<directory name>``."""
    try:
        found = subprocess.run(
            ["git", "-C", str(directory), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        )
        return f"memproxy@{found.stdout.strip()}"
    except (OSError, subprocess.CalledProcessError):
        return f"memproxy@{directory.name}"


@contextlib.contextmanager
def checkout_server(directory: Path, upstream: str, env: dict[str, str]) -> Iterator[Server]:
    """``python -m proxy serve`` run from another checkout (its own code first on the path)."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="memproxy-bench-") as data:
        where = {**env, "MEMPROXY_DATA_DIR": data, "PYTHONPATH": str(directory.resolve())}
        args = ["serve", "--port", str(port), "--upstream", upstream]
        command = [sys.executable, "-m", "proxy"]
        with child_server(args, port, env=where, command=command, cwd=directory.resolve()) as child:
            yield Server(checkout_name(directory), child, HEADERS)


def _forwarding(bench: Bench, levels: list[int], litellm: str | None, checkouts: list[Path]) -> list[list[str]]:
    emulator_port, proxy_port = free_port(), free_port()
    with contextlib.ExitStack() as stack:
        emulator = stack.enter_context(child_server(["emulator", "--port", str(emulator_port)], emulator_port))
        upstream = f"{emulator.url}/v1"
        args = ["serve", "--port", str(proxy_port), "--upstream", upstream]
        data = stack.enter_context(tempfile.TemporaryDirectory(prefix="memproxy-bench-"))
        env = {"MEMPROXY_LOG_LEVEL": "warning", "MEMPROXY_DATA_DIR": data}
        proxy = stack.enter_context(child_server(args, proxy_port, env=env))
        servers = [Server("direct", emulator, HEADERS), Server("memproxy", proxy, HEADERS)]
        for directory in checkouts:
            bench.progress.update(bench.task, description=f"starting {directory}")
            servers.append(stack.enter_context(checkout_server(directory, upstream, env)))
        if litellm is not None:
            bench.progress.update(bench.task, description="starting litellm")
            servers.append(stack.enter_context(litellm_server(litellm, upstream)))
        rows = []
        for label, stream in (("chat", False), ("chat stream", True)):
            for concurrency in levels:
                rows += bench.rows(label, concurrency, servers, partial(chat_plan, stream=stream))
        return rows
