"""The ``memproxy`` command line: serve the proxy, run the emulator, run benchmarks."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
import uvicorn

from proxy.config import Settings

if TYPE_CHECKING:
    from rich.table import Table

    from proxy.migrate import Summary

app = typer.Typer(help="memproxy: long-term memory for OpenAI API applications.", no_args_is_help=True)
bench = typer.Typer(help="Benchmarks; each prints a table.", no_args_is_help=True)
app.add_typer(bench, name="bench")


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

    given: dict[str, Any] = {"host": host, "port": port, "upstream_url": upstream}
    overrides = {name: value for name, value in given.items() if value is not None}
    settings = Settings(**overrides)
    _configure_logging(settings.log_level)
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
    )


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
    uvicorn.run(create_app(), host=host, port=port, log_level="warning")


@bench.command("overhead")
def bench_overhead(
    requests: Annotated[int, typer.Option("--requests", "-n", help="Requests per scenario.")] = 2000,
    concurrency: Annotated[int, typer.Option("--concurrency", "-c", help="Requests in flight.")] = 64,
    memories: Annotated[
        int, typer.Option(help="Memories in the tenant for the recall + injection rows (0: forwarding only).")
    ] = 100_000,
) -> None:
    """Latency the proxy adds over calling the emulator directly: forwarding, then recall + injection."""
    from proxy.bench.overhead import run

    run(requests=requests, concurrency=concurrency, memories=memories)


@bench.command("recall")
def bench_recall(
    sizes: Annotated[str, typer.Option(help="Memories in the tenant, comma-separated (10k,100k,1M).")] = "10k,100k",
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
        model_path=model_path,
        data=data,
        cache_dir=cache_dir,
    )


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
) -> None:
    """Evidence recall@5/10/25 of dense, BM25, hybrid and the service's ranking; evidence kept per token budget."""
    from proxy.bench.locomo import run

    run(data, model_path=model_path, cache_dir=cache_dir)


# --- GDPR and migration: forget, export, audit verify / head, migrate ---------------------------------

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
    str | None, typer.Option("--tenant", help="Tenant id (instead of deriving it from --api-key).")
]


def _fail(message: str, code: int = 2) -> typer.Exit:
    typer.echo(f"memproxy: {message}", err=True)
    return typer.Exit(code)


@app.command()
def forget(
    user: UserOption,
    api_key: ApiKeyOption = None,
    tenant: TenantOption = None,
    keep_upstream: Annotated[
        bool, typer.Option("--keep-upstream", help="Keep the user's upstream threads and conversations.")
    ] = False,
) -> None:
    """Erase a user (GDPR Art. 17): memories, state, pending jobs, and their upstream threads/conversations."""
    import asyncio

    from proxy.cli.tasks import run_forget

    settings = Settings()
    _configure_logging("warning")
    try:
        report = asyncio.run(run_forget(settings, user, tenant=tenant, api_key=api_key, keep_upstream=keep_upstream))
    except ValueError as exc:
        raise _fail(str(exc)) from None
    from rich.console import Console
    from rich.table import Table

    table = Table()
    table.add_column("deleted from")
    table.add_column("deleted", justify="right")
    for name, count in report.counts.items():
        table.add_row(name, str(count))
    console = Console()
    console.print(table)
    console.print(f"erasure of {report.subject_hash}: outcome {report.outcome}")
    if report.kept_upstream:
        console.print("upstream threads and conversations kept (--keep-upstream)")
    for failure in report.failed:
        console.print(
            f"[red]failed[/red] {failure.system} {failure.kind} {failure.id}: {failure.error} "
            f"({failure.attempts} attempts; run forget again to retry)"
        )
    console.print(f"audit entry {report.audit_id}")
    if report.failed:
        raise typer.Exit(1)


@app.command()
def export(user: UserOption, api_key: ApiKeyOption = None, tenant: TenantOption = None) -> None:
    """Export everything stored about a user as JSON on stdout (GDPR Art. 15/20): memproxy export -u U > u.json"""
    import asyncio
    import json

    from proxy.cli.tasks import run_export

    settings = Settings()
    _configure_logging("warning")
    try:
        exported = asyncio.run(run_export(settings, user, tenant=tenant, api_key=api_key))
    except ValueError as exc:
        raise _fail(str(exc)) from None
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
) -> None:
    """Check the tenant's keyed audit chain and its stored head: exit 0 if intact, 1 if edited, cut or rolled back."""
    import asyncio

    from proxy.audit import parse_head
    from proxy.cli.tasks import run_verify

    settings = Settings()
    _configure_logging("warning")
    try:
        kept = parse_head(head) if head is not None else None
        resolved, verdict = asyncio.run(run_verify(settings, tenant=tenant, api_key=api_key, kept=kept))
    except ValueError as exc:
        raise _fail(str(exc)) from None
    if verdict.ok:
        at = f", head {verdict.head}" if verdict.head else ""
        outside = f", reaches the head kept outside ({kept.seq})" if kept else ""
        typer.echo(f"audit log of {resolved}: OK, {verdict.checked} entries, chain intact{at}{outside}")
        return
    where = f" at entry {verdict.broken_at}" if verdict.broken_at else ""
    typer.echo(f"audit log of {resolved}: BROKEN{where}: {verdict.reason} (after {verdict.checked} good entries)")
    raise typer.Exit(1)


@audit_app.command("head")
def audit_head(api_key: ApiKeyOption = None, tenant: TenantOption = None) -> None:
    """Print the tenant's audit head SEQ:HASH: keep it outside memproxy, check later with `audit verify --head`."""
    import asyncio

    from proxy.cli.tasks import run_head

    settings = Settings()
    _configure_logging("warning")
    try:
        resolved, found = asyncio.run(run_head(settings, tenant=tenant, api_key=api_key))
    except ValueError as exc:
        raise _fail(str(exc)) from None
    typer.echo(
        f"audit head of {resolved}: {found}" if found else f"audit head of {resolved}: none (no keyed entry yet)"
    )


def _migration_table(summary: Summary) -> Table:
    """One row per thread: how far it got and what it taught."""
    from rich.table import Table

    table = Table(title=f"migration of {summary.subject_hash}")
    for name in ("thread", "status", "messages", "chunks", "skipped", "added", "unchanged", "error"):
        table.add_column(name, justify="right" if name not in ("thread", "status", "error") else "left")
    for result in summary.threads:
        counts = (result.messages, result.chunks, result.skipped_chunks, result.added, result.unchanged)
        table.add_row(result.thread, result.status, *map(str, counts), result.error or "")
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
) -> None:
    """Mine a user's existing threads into memories: every message, chunked; resumable and idempotent."""
    import asyncio

    from rich.console import Console
    from rich.progress import BarColumn, Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn

    from proxy.cli.tasks import run_migrate

    wanted = list(thread or [])
    if threads_file is not None:
        wanted += [
            line.strip() for line in threads_file.read_text().splitlines() if line.strip() and not line.startswith("#")
        ]
    settings = Settings()
    _configure_logging("warning")
    console = Console(stderr=True)
    columns = (
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[messages]} messages, {task.completed} chunks"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console) as bar:
        tasks: dict[str, TaskID] = {}

        def progress(thread_id: str, messages: int, chunks: int) -> None:
            if thread_id not in tasks:
                tasks[thread_id] = bar.add_task(thread_id, total=None, messages=0)
            bar.update(tasks[thread_id], completed=chunks, messages=messages)

        try:
            summary = asyncio.run(
                run_migrate(settings, user, wanted, seen=seen, tenant=tenant, api_key=api_key, progress=progress)
            )
        except ValueError as exc:
            raise _fail(str(exc)) from None
    Console().print(_migration_table(summary))
    if not summary.ok:
        raise typer.Exit(1)


def main() -> None:
    app()
