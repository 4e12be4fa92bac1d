"""The ``memproxy`` command line: serve the proxy, run the emulator, run benchmarks."""

from __future__ import annotations

import logging
from typing import Annotated, Optional

import typer
import uvicorn

from proxy.config import Settings

app = typer.Typer(help="memproxy: long-term memory for OpenAI API applications.", no_args_is_help=True)
bench = typer.Typer(help="Benchmarks; each prints a table.", no_args_is_help=True)
app.add_typer(bench, name="bench")


def _configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")


@app.command()
def serve(
    host: Annotated[Optional[str], typer.Option(help="Listen address (MEMPROXY_HOST).")] = None,
    port: Annotated[Optional[int], typer.Option(help="Listen port (MEMPROXY_PORT).")] = None,
    upstream: Annotated[Optional[str], typer.Option(help="Upstream base URL (MEMPROXY_UPSTREAM_URL).")] = None,
) -> None:
    """Serve the proxy. Point an app at it with OPENAI_BASE_URL=http://HOST:PORT/v1."""
    from proxy.app import create_app

    overrides = {k: v for k, v in {"host": host, "port": port, "upstream_url": upstream}.items() if v is not None}
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
    )


@app.command()
def worker(
    concurrency: Annotated[Optional[int], typer.Option(help="Jobs run at once (MEMPROXY_WORKER_CONCURRENCY).")] = None,
    once: Annotated[bool, typer.Option("--once", help="Handle the jobs due now, then exit.")] = False,
) -> None:
    """Run the extraction worker alone (no HTTP): drain the shared job queue into memories."""
    import asyncio

    from proxy.jobs import run_standalone, standalone_problem

    settings = Settings(**({"worker_concurrency": concurrency} if concurrency is not None else {}))
    _configure_logging(settings.log_level)
    problem = standalone_problem(settings)
    if problem:
        typer.echo(f"memproxy worker: {problem}", err=True)
        raise typer.Exit(2)
    stats = asyncio.run(run_standalone(settings, once=once))
    typer.echo(f"memproxy worker: {stats.processed} jobs done, {stats.failed} failed, {stats.dead_lettered} dead-lettered")


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
) -> None:
    """Latency the proxy adds over calling the emulator directly, plain and streamed."""
    from proxy.bench.overhead import run

    run(requests=requests, concurrency=concurrency)


def main() -> None:
    app()
