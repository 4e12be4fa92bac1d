"""The ``memproxy`` command line: serve the proxy, run the emulator, run benchmarks."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
import uvicorn

from proxy.config import Settings

if TYPE_CHECKING:
    from rich.table import Table

    from proxy.cli.remote import Remote

app = typer.Typer(help="memproxy: long-term memory for OpenAI API applications.", no_args_is_help=True)
bench = typer.Typer(help="Benchmarks; each prints a table.", no_args_is_help=True)
app.add_typer(bench, name="bench")


def _show_version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"memproxy {version('memproxy')}")
        raise typer.Exit()


@app.callback()
def _options(
    show_version: Annotated[
        bool, typer.Option("--version", callback=_show_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """memproxy: long-term memory for OpenAI API applications."""


def _configure_logging(level: str) -> None:
    """Text or JSON lines (``MEMPROXY_LOG_FORMAT``), with request ids: see proxy/logs.py."""
    from proxy.logs import setup_logging

    setup_logging(level)


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Listen address (MEMPROXY_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Listen port (MEMPROXY_PORT).")] = None,
    upstream: Annotated[str | None, typer.Option(help="Upstream base URL (MEMPROXY_UPSTREAM_URL).")] = None,
) -> None:
    """Serve the proxy. Point an app at it with OPENAI_BASE_URL=http://HOST:PORT/v1."""
    from proxy.app import create_app
    from proxy.cli.discovery import announce, local_url, withdraw

    given: dict[str, Any] = {"host": host, "port": port, "upstream_url": upstream}
    overrides = {name: value for name, value in given.items() if value is not None}
    settings = Settings(**overrides)
    _configure_logging(settings.log_level)
    announce(settings.data_dir, local_url(settings.host, settings.port))  # the GDPR commands find it here
    try:
        from proxy.server import server_options  # client limits (header size and time, body, shutdown)

        # The upstream's Date and Server headers pass through; uvicorn must not add a second pair.
        uvicorn.run(
            create_app(settings),
            host=settings.host,
            port=settings.port,
            log_level=settings.log_level,
            server_header=False,
            date_header=False,
            log_config=None,  # uvicorn's loggers go through ours (JSON when asked)
            access_log=False,  # memproxy.access logs each request instead, with its id and route
            **server_options(settings),
        )
    finally:
        withdraw(settings.data_dir)


@app.command()
def worker(
    concurrency: Annotated[int | None, typer.Option(help="Jobs run at once (MEMPROXY_WORKER_CONCURRENCY).")] = None,
    once: Annotated[bool, typer.Option("--once", help="Handle the jobs due now, then exit.")] = False,
) -> None:
    """Run the extraction worker alone (no HTTP): drain the shared job queue into memories."""
    import asyncio

    from proxy.cli.tasks import run_standalone
    from proxy.learn.worker import standalone_problem

    overrides: dict[str, Any] = {"worker_concurrency": concurrency} if concurrency is not None else {}
    settings = Settings(**overrides)
    _configure_logging(settings.log_level)
    problem = standalone_problem(settings)
    if problem:
        typer.echo(f"memproxy worker: {problem}", err=True)
        raise typer.Exit(2)
    stats = asyncio.run(run_standalone(settings, once=once))
    typer.echo(
        f"memproxy worker: {stats.processed} jobs done, {stats.failed} failed, {stats.dead_lettered} dead-lettered"
    )


@app.command()
def emulator(
    host: Annotated[str, typer.Option(help="Listen address.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Listen port.")] = 8090,
) -> None:
    """Serve the offline OpenAI-compatible emulator (deterministic model, no network)."""
    from proxy.emulator import create_app

    _configure_logging("info")
    typer.echo(f"memproxy emulator listening on http://{host}:{port}/v1 (offline: a deterministic model, no network)")
    typer.echo(f"  point memproxy at it: memproxy serve --upstream http://{host}:{port}/v1")
    uvicorn.run(create_app(), host=host, port=port, log_level="warning")


@bench.command("overhead")
def bench_overhead(
    seconds: Annotated[float, typer.Option(help="Seconds of load per cell (one server, one concurrency).")] = 5.0,
    concurrency: Annotated[int, typer.Option("--concurrency", "-c", help="Requests in flight.")] = 64,
    memories: Annotated[
        int, typer.Option(help="Memories in the tenant for the recall + injection rows (0: forwarding only).")
    ] = 100_000,
    load: Annotated[str, typer.Option(help="Load generator: auto (wrk when installed), wrk or python.")] = "auto",
    compare: Annotated[
        list[str] | None,
        typer.Option(
            help="Also measure another proxy on the same emulator: litellm, or the directory of another memproxy "
            "checkout (e.g. a git worktree of an older commit), repeatable."
        ),
    ] = None,
    litellm_bin: Annotated[str | None, typer.Option(help="The litellm command (default: litellm on the PATH).")] = None,
) -> None:
    """Latency the proxy adds over calling the emulator directly: forwarding, then recall + injection."""
    from proxy.bench.overhead import run

    if load not in ("auto", "wrk", "python"):
        raise typer.BadParameter("--load is auto, wrk or python")
    for name in compare or []:
        if name != "litellm" and not (Path(name) / "proxy" / "__main__.py").is_file():
            raise typer.BadParameter(
                f"--compare {name}: neither litellm nor a memproxy checkout (no proxy/__main__.py)"
            )
    run(seconds, concurrency, memories, load=load, compare=compare, litellm_bin=litellm_bin)


@bench.command("soak")
def bench_soak(
    seconds: Annotated[float, typer.Option(help="Seconds of traffic at most.")] = 60.0,
    requests: Annotated[int, typer.Option("--requests", "-n", help="Requests at most (0: as many as fit).")] = 0,
    concurrency: Annotated[int, typer.Option("--concurrency", "-c", help="Clients sending at once.")] = 16,
    memory_share: Annotated[float, typer.Option(help="Share of requests naming a user (memory on).")] = 0.5,
    fault_rate: Annotated[float, typer.Option(help="Share of requests the upstream fails: 5xx, cut, slow.")] = 0.1,
    abandon_rate: Annotated[float, typer.Option(help="Share of requests their client abandons.")] = 0.05,
    seed: Annotated[int, typer.Option(help="Seed of the request plan (same seed, same requests).")] = 1,
    model_path: Annotated[
        Path | None, typer.Option(help="Embedding model directory (MEMPROXY_EMBED_MODEL_PATH).")
    ] = None,
) -> None:
    """Mixed traffic with upstream faults and abandoned clients: errors by kind, lost turns, RSS and fds.

    Exits 1 when a turn was lost or learned without its answer, a memory doubled, a job dead-lettered
    or an answer differed from what the upstream was told to do.
    """
    from proxy.bench.soak import run

    for name, share in (
        ("--memory-share", memory_share),
        ("--fault-rate", fault_rate),
        ("--abandon-rate", abandon_rate),
    ):
        if not 0 <= share <= 1:
            raise typer.BadParameter("a share from 0 to 1", param_hint=name)
    if fault_rate + abandon_rate > 1:
        raise typer.BadParameter("--fault-rate + --abandon-rate must stay at most 1", param_hint="--fault-rate")
    result = run(
        seconds=seconds,
        requests=requests,
        concurrency=concurrency,
        memory_share=memory_share,
        fault_rate=fault_rate,
        abandon_rate=abandon_rate,
        seed=seed,
        model_path=model_path,
    )
    if not result.passed:
        raise typer.Exit(1)


@bench.command("recall")
def bench_recall(
    sizes: Annotated[str, typer.Option(help="Memories in the tenant, comma-separated (1k,100k,1M).")] = "1k,100k",
    backends: Annotated[
        str, typer.Option(help="Stores to measure: edge, qdrant-local (comma-separated).")
    ] = "edge,qdrant-local",
    subjects: Annotated[int, typer.Option(help="Subjects the memories are spread over.")] = 1000,
    worst_case: Annotated[bool, typer.Option(help="Also measure every memory in one subject.")] = True,
    pool: Annotated[
        int, typer.Option(help="Distinct sentences embedded with the real model to build the corpus.")
    ] = 2000,
    queries: Annotated[int, typer.Option("--queries", "-n", help="Recalls per cell at most.")] = 200,
    seconds: Annotated[float, typer.Option(help="Seconds per cell and pass at most (recalls; remembers).")] = 5.0,
    writes: Annotated[int, typer.Option(help="remember calls per cell at most.")] = 100,
    concurrency: Annotated[
        int, typer.Option(help="Also run distinct recalls this many at a time and report recalls/s (0: off).")
    ] = 0,
    optimize: Annotated[bool, typer.Option(help="Also measure the embedded store after optimize().")] = True,
    rss: Annotated[
        bool, typer.Option(help="Print this process's resident memory per cell (one size per run).")
    ] = False,
    data: Annotated[
        Path | None,
        typer.Option(
            exists=True, dir_okay=False, help="LoCoMo-format file: its turns and questions as pool and queries."
        ),
    ] = None,
    model_path: Annotated[
        Path | None, typer.Option(help="Embedding model directory (MEMPROXY_EMBED_MODEL_PATH).")
    ] = None,
    cache_dir: Annotated[
        Path | None, typer.Option(help="Keep pool embeddings here between runs (e.g. under /tmp).")
    ] = None,
) -> None:
    """Recall latency (embed + hybrid search + scoring + block) by store size and backend, and write rates."""
    from proxy.bench.recall import BACKENDS, parse_sizes, run

    try:
        parsed = parse_sizes(sizes)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--sizes") from None
    chosen = [b.strip() for b in backends.split(",") if b.strip()]
    if not chosen or any(b not in BACKENDS for b in chosen):
        raise typer.BadParameter(
            f"unknown backend in {backends!r}: choose from {', '.join(BACKENDS)}", param_hint="--backends"
        )
    run(
        sizes=parsed,
        backends=chosen,
        subjects=subjects,
        worst_case=worst_case,
        pool_size=pool,
        max_queries=queries,
        max_seconds=seconds,
        max_writes=writes,
        concurrency=concurrency,
        optimize=optimize,
        rss=rss,
        model_path=model_path,
        data=data,
        cache_dir=cache_dir,
    )


@bench.command("recall-load")
def bench_recall_load(
    memories: Annotated[int, typer.Option(help="Memories in the tenant (over 1,000 users).")] = 1000,
    concurrency: Annotated[int, typer.Option("--concurrency", "-c", help="Connections wrk keeps busy.")] = 64,
    seconds: Annotated[float, typer.Option(help="Seconds per measured run.")] = 15.0,
) -> None:
    """Chat completions with a different question each, through the proxy under wrk: requests/s, CPU per request."""
    from proxy.bench.recall.load import run

    run(memories, concurrency, seconds)


@bench.command("locomo")
def bench_locomo(
    data: Annotated[
        Path,
        typer.Option(
            exists=True, dir_okay=False, help="LoCoMo-format JSON file (e.g. ../shared/data/locomo-dev.json)."
        ),
    ],
    model_path: Annotated[
        Path | None, typer.Option(help="Embedding model directory (MEMPROXY_EMBED_MODEL_PATH).")
    ] = None,
    cache_dir: Annotated[
        Path | None, typer.Option(help="Keep turn embeddings here between runs (e.g. under /tmp).")
    ] = None,
    rankings: Annotated[
        Path | None, typer.Option(help="Write every question's rankings here (JSON lines), to compare runs.")
    ] = None,
    context: Annotated[
        bool, typer.Option(help="Store each turn with the turn it answers (contextual text for verbatim memories).")
    ] = False,
) -> None:
    """Evidence recall@5/10/25 (macro and micro) of dense, BM25, hybrid and the service's ranking; evidence kept
    per token budget (1k to 16k)."""
    from proxy.bench.locomo import run

    run(data, model_path=model_path, cache_dir=cache_dir, rankings=rankings, context=context)


@bench.command("quality")
def bench_quality(
    model_path: Annotated[
        Path | None, typer.Option(help="Embedding model directory (MEMPROXY_EMBED_MODEL_PATH).")
    ] = None,
) -> None:
    """Share of the memories a question needs that the proxy injects, and memories per request, per gating."""
    from proxy.bench.quality import run

    run(model_path=model_path)


# --- GDPR and migration: forget, export, audit verify / head, migrate ---------------------------------
#
# Each runs against the proxy serving this data directory when there is one (or ``--url``), through
# its memory API and so with its configuration; otherwise it opens the stores itself. Both ways
# answer the same JSON, printed the same way; a failure is one line on stderr, never a traceback.

audit_app = typer.Typer(help="The tamper-evident audit log.", no_args_is_help=True)
app.add_typer(audit_app, name="audit")

UserOption = Annotated[str, typer.Option("--user", "-u", help="The end user (subject) as the application names them.")]
ApiKeyOption = Annotated[
    str | None,
    typer.Option(
        "--api-key",
        help="The application's API key: its tenant, and the upstream credential (else MEMPROXY_LLM_API_KEY).",
    ),
]
TenantOption = Annotated[
    str | None,
    typer.Option("--tenant", help="Tenant id (instead of --api-key; with a running proxy: MEMPROXY_ADMIN_TOKEN)."),
]
UrlOption = Annotated[
    str | None,
    typer.Option(
        "--url",
        help="A running proxy to act through (default: the one serving MEMPROXY_DATA_DIR, if any; else the "
        "stores are opened directly).",
    ),
]
UpstreamOption = Annotated[
    str | None,
    typer.Option("--upstream", help="Upstream base URL when the stores are opened directly (MEMPROXY_UPSTREAM_URL)."),
]
T = TypeVar("T")


def _fail(message: str, code: int = 2) -> typer.Exit:
    typer.echo(f"memproxy: {message}", err=True)
    return typer.Exit(code)


def _settings(upstream: str | None = None) -> Settings:
    _configure_logging("critical")  # what went wrong is in the command's report or its one error line
    overrides: dict[str, Any] = {"upstream_url": upstream} if upstream else {}
    return Settings(**overrides)


def _remote(settings: Settings, url: str | None, api_key: str | None, tenant: str | None) -> Remote | None:
    """The running proxy to act through: ``--url``, else the one announced in the data directory."""
    from proxy.cli.discovery import serving
    from proxy.cli.remote import Remote

    target = url or serving(settings.data_dir)
    if target is None:
        return None
    token = settings.admin_token.get_secret_value() if settings.admin_token else None
    return Remote(target, api_key=api_key, tenant=tenant, admin_token=token)


def _do(
    settings: Settings,
    remote: Callable[[Remote], T],
    local: Callable[[], Coroutine[Any, Any, T]],
    *,
    url: str | None,
    api_key: str | None,
    tenant: str | None,
) -> T:
    """Run a command through the running proxy, else locally; every failure as one line."""
    import asyncio

    from proxy.errors import MemproxyError

    try:
        target = _remote(settings, url, api_key, tenant)
        if target is not None:
            return remote(target)
        return asyncio.run(local())
    except (MemproxyError, ValueError) as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "WouldBlock" in message or "database is locked" in message:
            message = (
                f"the data directory {settings.data_dir} is in use by a running proxy: pass --url URL, "
                "or run the command where it serves"
            )
        raise _fail(message) from None


@app.command()
def forget(
    user: UserOption,
    api_key: ApiKeyOption = None,
    tenant: TenantOption = None,
    keep_upstream: Annotated[
        bool, typer.Option("--keep-upstream", help="Keep the user's upstream threads and conversations.")
    ] = False,
    url: UrlOption = None,
    upstream: UpstreamOption = None,
) -> None:
    """Erase a user (GDPR Art. 17): memories, state, pending jobs, and their upstream threads/conversations."""
    from proxy.cli.tasks import run_forget

    settings = _settings(upstream)
    report = _do(
        settings,
        lambda target: target.forget(user, keep_upstream=keep_upstream),
        lambda: run_forget(settings, user, tenant=tenant, api_key=api_key, keep_upstream=keep_upstream),
        url=url,
        api_key=api_key,
        tenant=tenant,
    )
    _print_erasure(report)
    if report.get("failed"):
        raise typer.Exit(1)


def _print_erasure(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table()
    table.add_column("deleted from")
    table.add_column("deleted", justify="right")
    for name, count in report.get("deleted", {}).items():
        table.add_row(name, str(count))
    console = Console()
    console.print(table)
    console.print(f"erasure of {report.get('subject')}: outcome {report.get('outcome')}")
    if report.get("upstream", {}).get("kept"):
        console.print("upstream threads and conversations kept (--keep-upstream)")
    for failure in report.get("failed", []):
        console.print(
            f"[red]failed[/red] {failure['system']} {failure['kind']} {failure['id']}: {failure['error']} "
            f"({failure['attempts']} attempts; run forget again to retry)"
        )
    console.print(f"audit entry {report.get('audit_id')}")


@app.command()
def export(user: UserOption, api_key: ApiKeyOption = None, tenant: TenantOption = None, url: UrlOption = None) -> None:
    """Export everything stored about a user as JSON on stdout (GDPR Art. 15/20): memproxy export -u U > u.json"""
    import json

    from proxy.cli.tasks import run_export

    settings = _settings()
    exported = _do(
        settings,
        lambda target: target.export(user),
        lambda: run_export(settings, user, tenant=tenant, api_key=api_key),
        url=url,
        api_key=api_key,
        tenant=tenant,
    )
    typer.echo(json.dumps(exported, indent=2, ensure_ascii=False))


@audit_app.command("verify")
def audit_verify(
    api_key: ApiKeyOption = None,
    tenant: TenantOption = None,
    head: Annotated[
        str | None,
        typer.Option(
            "--head",
            metavar="SEQ:HASH",
            help="A head kept outside memproxy (from `memproxy audit head`): also catches log and stored head "
            "rolled back together.",
        ),
    ] = None,
    url: UrlOption = None,
) -> None:
    """Check the tenant's keyed audit chain and its stored head: exit 0 if intact, 1 if edited, cut or rolled back."""
    from proxy.cli.tasks import run_verify

    settings = _settings()
    verdict = _do(
        settings,
        lambda target: target.verify(head),
        lambda: run_verify(settings, tenant=tenant, api_key=api_key, kept=head),
        url=url,
        api_key=api_key,
        tenant=tenant,
    )
    of = verdict.get("tenant")
    if verdict["ok"]:
        at = f", head {verdict['head']}" if verdict.get("head") else ""
        outside = f", reaches the head kept outside ({head.split(':')[0]})" if head else ""
        typer.echo(f"audit log of {of}: OK, {verdict['checked']} entries, chain intact{at}{outside}")
        return
    where = f" at entry {verdict['broken_at']}" if verdict.get("broken_at") else ""
    typer.echo(f"audit log of {of}: BROKEN{where}: {verdict['reason']} (after {verdict['checked']} good entries)")
    raise typer.Exit(1)


@audit_app.command("head")
def audit_head(api_key: ApiKeyOption = None, tenant: TenantOption = None, url: UrlOption = None) -> None:
    """Print the tenant's audit head SEQ:HASH: keep it outside memproxy, check later with `audit verify --head`."""
    from proxy.cli.tasks import run_head

    settings = _settings()
    found = _do(
        settings,
        lambda target: target.head(),
        lambda: run_head(settings, tenant=tenant, api_key=api_key),
        url=url,
        api_key=api_key,
        tenant=tenant,
    )
    shown = found["head"] or "none (no keyed entry yet)"
    typer.echo(f"audit head of {found['tenant']}: {shown}")


def _migration_table(summary: dict[str, Any]) -> Table:
    """One row per thread: how far it got and what it taught."""
    from rich.table import Table

    table = Table(title=f"migration of {summary.get('subject')}")
    names = ("messages", "chunks", "skipped_chunks", "added", "unchanged")
    for name in ("thread", "status", "messages", "chunks", "skipped", "added", "unchanged", "error"):
        table.add_column(name, justify="right" if name not in ("thread", "status", "error") else "left")
    for result in summary.get("threads", []):
        counts = [str(result.get(name, 0)) for name in names]
        table.add_row(result["thread"], result["status"], *counts, result.get("error") or "")
    return table


@app.command()
def migrate(
    user: UserOption,
    thread: Annotated[
        list[str] | None, typer.Option("--thread", "-t", help="Thread or conversation id; repeat for more.")
    ] = None,
    threads_file: Annotated[
        Path | None, typer.Option(exists=True, dir_okay=False, help="File with one thread id per line.")
    ] = None,
    seen: Annotated[bool, typer.Option("--seen", help="Also every thread the proxy has seen for the user.")] = False,
    api_key: ApiKeyOption = None,
    tenant: TenantOption = None,
    url: UrlOption = None,
    upstream: UpstreamOption = None,
) -> None:
    """Mine a user's existing threads into memories: every message, chunked; resumable and idempotent."""
    from rich.console import Console

    from proxy.cli.tasks import run_migrate

    wanted = list(thread or [])
    if threads_file is not None:
        wanted += [
            line.strip() for line in threads_file.read_text().splitlines() if line.strip() and not line.startswith("#")
        ]
    settings = _settings(upstream)
    with _progress_bar() as progress:
        summary = _do(
            settings,
            lambda target: target.migrate(user, wanted, seen=seen),
            lambda: run_migrate(settings, user, wanted, seen=seen, tenant=tenant, api_key=api_key, progress=progress),
            url=url,
            api_key=api_key,
            tenant=tenant,
        )
    Console().print(_migration_table(summary))
    if not summary.get("ok"):
        raise typer.Exit(1)


@contextlib.contextmanager
def _progress_bar() -> Iterator[Callable[[str, int, int], None]]:
    """A live bar per thread on stderr; yields the migration's progress callback."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn

    columns = (
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[messages]} messages, {task.completed} chunks"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=Console(stderr=True)) as bar:
        tasks: dict[str, TaskID] = {}

        def progress(thread_id: str, messages: int, chunks: int) -> None:
            if thread_id not in tasks:
                tasks[thread_id] = bar.add_task(thread_id, total=None, messages=0)
            bar.update(tasks[thread_id], completed=chunks, messages=messages)

        yield progress


def main() -> None:
    app()
