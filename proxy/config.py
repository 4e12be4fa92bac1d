"""Settings, read from the environment (prefix ``MEMPROXY_``) so a sidecar needs no config file.

Every field here is documented in the README's configuration table; keep the two in step.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MEMPROXY_", extra="ignore")

    # --- serving -------------------------------------------------------------------------------
    upstream_url: str = Field("https://api.openai.com/v1", description="Base URL of the upstream OpenAI API.")
    host: str = Field("127.0.0.1", description="Address the proxy listens on.")
    port: int = Field(8080, description="Port the proxy listens on.")
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    data_dir: Path = Field(Path("~/.local/share/memproxy"), description="Embedded state and vectors live here.")

    # --- clients (see README, "Limits") ----------------------------------------------------------
    max_header_bytes: int = Field(
        65536, description="Largest request line + headers a client may send, in bytes; more is a 431."
    )
    max_header_field_bytes: int = Field(
        16384, description="Largest single request header (name + value), in bytes; more is a 431."
    )
    header_timeout: float = Field(
        10.0,
        description="Seconds a client has to send a request's line and headers (from connecting, or "
        "its first byte on a kept-alive connection); then 408 and closed.",
    )
    body_timeout: float = Field(
        30.0, description="Seconds a client may stay silent while sending a request body; then 408 and closed."
    )
    client_keepalive_timeout: int = Field(
        5, description="Seconds an idle client connection is kept open between two requests."
    )
    max_client_connections: int | None = Field(
        2048, description="Client connections (and requests in flight) at most; past it new requests get a 503."
    )
    shutdown_timeout: int = Field(
        20, description="Seconds a stopping proxy (SIGTERM) waits for requests in flight before cancelling them."
    )

    # --- upstream connection -------------------------------------------------------------------
    connect_timeout: float = Field(5.0, description="Seconds to open a connection to the upstream.")
    read_timeout: float | None = Field(
        None, description="Seconds between two upstream bytes; unset means none (streams may idle)."
    )
    write_timeout: float = Field(60.0, description="Seconds to send one chunk of the request body upstream.")
    pool_timeout: float = Field(10.0, description="Seconds to wait for a free upstream connection.")
    max_connections: int = Field(1000, description="Upper bound on open upstream connections.")
    upstream_ca_file: Path | None = Field(
        None,
        description="PEM file of the CAs the upstream's TLS certificate must chain to; unset: the public CAs (certifi).",
    )
    keepalive_interval: float = Field(
        15.0, description="Seconds of upstream silence on an SSE stream before a `: keepalive` comment."
    )

    assistants: Literal["auto", "bridge", "passthrough"] = Field(
        "auto",
        description="Assistants API: served by memproxy on Responses (bridge), forwarded (passthrough), "
        "or bridge only when the upstream is api.openai.com (auto).",
    )

    # --- identity ------------------------------------------------------------------------------
    secret: SecretStr | None = Field(
        None, description="Server secret for tenant HMACs; generated under data_dir when unset (one replica)."
    )
    tenant: str | None = Field(
        None,
        description="Fixed tenant id (a sidecar whose API keys rotate); the memory API then needs the admin token.",
    )
    admin_token: SecretStr | None = Field(
        None,
        description="Bearer token for admin calls of the memory API; with a fixed tenant, required for every call.",
    )

    # --- storage -------------------------------------------------------------------------------
    # a Redis URL may carry a password: out of repr like the secrets (a plain str for proxy/state/)
    redis_url: str | None = Field(
        None, description="Redis for state and jobs; unset: SQLite under data_dir.", repr=False
    )
    qdrant_url: str | None = Field(None, description="Qdrant server; unset: embedded Qdrant Edge under data_dir.")
    qdrant_api_key: str | None = Field(None, description="API key of the Qdrant server.", repr=False)
    collection: str = Field("memproxy_memories", description="Qdrant collection name.")
    edge_optimize_after: int = Field(
        0,
        ge=0,
        description="Embedded store: optimize it (build the HNSW index, merge segments, in a child process) once "
        "this many points were written since the last optimize and writes paused; also at start-up. 0 (default): "
        "never; worth it when single subjects hold tens of thousands of memories (recall is off while it runs).",
    )
    edge_optimize_interval: float = Field(
        30.0, gt=0, description="Seconds between two checks of whether the embedded store needs optimizing."
    )
    single_replica: bool = Field(
        False,
        description="Declares this the only process on its stores: allows Redis with embedded memories, or a "
        "Qdrant server with SQLite state (refused otherwise: replicas would split a user's data).",
    )
    reconnect_backoff: float = Field(
        0.5, description="Seconds before retrying to open an unavailable Redis, Qdrant or model; doubles per try."
    )
    reconnect_backoff_cap: float = Field(
        30.0, description="Longest wait between two tries to open Redis, Qdrant or the model, in seconds."
    )

    # --- embeddings ----------------------------------------------------------------------------
    embedder: Literal["local", "upstream"] = Field(
        "local", description="fastembed locally, or upstream /v1/embeddings."
    )
    embed_model: str = Field("sentence-transformers/all-MiniLM-L6-v2", description="Embedding model name.")
    embed_model_path: Path | None = Field(None, description="Local model directory: loads with no download.")
    upstream_embed_model: str = Field("text-embedding-3-small", description="Model for the upstream embedder.")

    # --- memory ---
    embed_dim: int | None = Field(
        None, description="Upstream embedding size (sent as `dimensions`); unset: the model's known size."
    )
    embed_cache_size: int = Field(1024, description="Query embeddings kept in the local embedder's LRU cache.")
    embed_threads: int = Field(
        1, description="ONNX threads per local embedding: 1 suits a server (requests already run in parallel)."
    )
    embed_quantize: Literal["int8", "off"] = Field(
        "int8",
        description="Run the local model as its int8 copy (made once under data_dir/models; ~3x faster per "
        "query, LoCoMo recall within a point) or as shipped (`off`).",
    )
    embed_max_batch: int = Field(
        32, ge=1, description="Queries embedded together at most when requests arrive while the model is busy."
    )
    embed_batch_window_ms: float = Field(
        0.0,
        ge=0,
        description="Extra wait for more queries before a batch queued behind a busy model runs (0: none; "
        "a query that finds the model idle never waits).",
    )
    memory_per_assistant: bool = Field(
        False, description="Recall only the asking assistant's memories (+ unassigned); off: a user's assistants share."
    )
    memory_top_k: int = Field(8, description="Memories recalled per request at most.")
    memory_min_similarity: float = Field(
        0.1,
        description="Recalled memories less similar to the query than this are dropped, however recent "
        "(calibrated for MiniLM: unrelated sentences score about 0 to 0.1).",
    )
    memory_relative_similarity: float = Field(
        0.3,
        description="Recalled memories less similar than this share of the best candidate's similarity are dropped.",
    )
    memory_date_cues: bool = Field(
        False,
        description='Memories learned in a month or year the query names ("in June", "in 2023") go first among '
        "those recalled.",
    )
    memory_query_rewrite: bool = Field(
        False,
        description="Before recall, ask the upstream extraction model to rewrite the latest user message and the "
        "previous one into a standalone query, within part of the recall deadline (fails open to the original).",
    )
    memory_pinned_kinds: list[str] = Field(
        ["constraint"],
        description="Kinds of memory injected on every request, relevant or not (JSON list; [] turns pinning off).",
    )
    memory_pinned_max: int = Field(3, description="Pinned memories per request at most, the most relevant first.")
    memory_min_confidence: float = Field(
        0.0,
        description="Recalled memories below this confidence are dropped (0: similarity alone gates; confidence "
        "includes recency, so a floor drops old facts that still hold).",
    )
    memory_candidates: int = Field(40, description="Candidates per retriever (dense, BM25) before confidence ranking.")
    rerank_model_path: Path | None = Field(
        None,
        description="Directory of a cross-encoder's ONNX export (fastembed TextCrossEncoder): reranks recall's first "
        "candidates before gating; unset: no rerank stage (unmeasured here: no such model on the benchmark machine).",
    )
    rerank_model: str = Field(
        "Xenova/ms-marco-MiniLM-L-6-v2", description="fastembed's name of the cross-encoder in rerank_model_path."
    )
    rerank_candidates: int = Field(20, ge=1, description="Recall's first candidates the cross-encoder reorders.")
    memory_near_duplicate: float = Field(
        0.92, description="Cosine above which a new memory counts as a near-duplicate of an existing one."
    )
    memory_ttl_days: dict[str, float] = Field(
        {"temporary": 7.0},
        description='Default TTL in days per kind (JSON, e.g. {"temporary": 7}); others never expire.',
    )
    memory_max_chars: int = Field(2000, description="Longest memory text accepted.")
    memory_block_tokens: int = Field(1000, description="Token budget of the injected block (o200k tokenizer).")
    memory_block_tokens_max: int = Field(
        4000, ge=0, description="Largest block budget a request may ask for with X-Memory-Budget (o200k tokens)."
    )
    memory_line_chars: int = Field(300, description="Longest memory line in the injected block, in characters.")
    memory_weight_similarity: float = Field(0.6, description="Confidence weight of query similarity.")
    memory_weight_recency: float = Field(0.25, description="Confidence weight of recency.")
    memory_weight_frequency: float = Field(0.15, description="Confidence weight of access frequency.")
    memory_half_life_days: float = Field(30.0, description="Days after which the recency term halves.")
    memory_frequency_cap: int = Field(20, description="Access count at which the frequency term reaches 1.")
    janitor_interval: float = Field(
        300.0, description="Seconds between two sweeps removing expired memories (audited)."
    )
    memory_access_flush_seconds: float = Field(2.0, description="How often recall's access counts are written back.")
    redact_secrets: bool = Field(
        True,
        description="Replace API keys, passwords, card numbers, IBANs and similar in a memory's text with "
        "[redacted:<kind>] before it is stored or embedded (extracted or written through the memory API).",
    )
    redact_patterns: dict[str, str] = Field(
        {},
        description='Operator patterns redacted as well (JSON name -> regex, e.g. {"employee_id": "EMP-\\d{6}"}): '
        "each match is stored as [redacted:<name>]; applied even when redact_secrets is off.",
    )

    # --- hooks ---
    memory_user_header: str = Field("x-memory-user", description="Request header naming the end user (subject).")
    memory_user_keys: list[str] = Field(
        ["user_id", "user", "end_user_id"],
        description="Metadata keys that name the end user, first match wins (JSON list).",
    )
    memory_recall_deadline_ms: float = Field(
        150.0, description="Recall budget per request; past it the request goes upstream without memory (degraded)."
    )
    memory_capture_deadline_ms: float = Field(
        250.0,
        ge=0,
        description="How long the end of a hooked answer waits for its turn to be queued or spooled; past it the "
        "answer ends and the turn is queued in the background (0: always in the background).",
    )
    memory_max_body_bytes: int = Field(
        4 * 1024 * 1024,
        gt=0,
        description="Larger request bodies go upstream untouched without memory (`x-memory-reason: body-too-large`); "
        "the memory API answers them 413.",
    )

    # --- state and jobs ---
    redis_prefix: str = Field("memproxy", description="Prefix of every Redis key, so deployments can share a Redis.")
    job_max_attempts: int = Field(5, description="Deliveries of a job before it moves to the dead-letter list.")
    job_backoff_base: float = Field(2.0, description="Seconds before the first retry; doubles per failed attempt.")
    job_backoff_cap: float = Field(300.0, description="Longest wait between two retries of a job, in seconds.")
    job_lease_seconds: float = Field(60.0, description="A claimed job is delivered again if not acked within this.")
    job_idempotency_retention: float = Field(
        86400.0, description="Seconds a finished job's idempotency key still suppresses duplicates."
    )

    # --- extraction ---
    extractor: Literal["llm", "verbatim"] = Field(
        "llm",
        description="How finished turns become memories: an LLM call (llm) or the user's messages as said (verbatim).",
    )
    extract_model: str = Field("gpt-4o-mini", description="Upstream chat model of the extraction call.")
    llm_api_key: SecretStr | None = Field(
        None,
        description="API key for extraction calls; unset: the tenant's own key from its live requests (memory only).",
    )
    extract_timeout: float = Field(30.0, description="Seconds one extraction call may take.")
    extract_similar: int = Field(10, description="Existing memories shown to the extraction model for consolidation.")
    extract_key_ttl: float = Field(
        3600.0, description="Seconds a tenant's API key is kept in process memory for its extraction jobs."
    )
    worker_in_proxy: bool = Field(True, description="Run the extraction worker inside `memproxy serve`.")
    worker_concurrency: int = Field(2, description="Extraction jobs one worker runs at once.")
    worker_poll_interval: float = Field(1.0, description="Seconds an idle worker waits before polling the queue again.")

    # --- erasure and migration ---
    erasure_attempts: int = Field(
        3,
        description="Tries of each upstream thread/conversation deletion during erasure before it is reported failed.",
    )
    erasure_backoff: float = Field(
        0.5, description="Seconds before the second try of a failed upstream deletion; doubles per try."
    )
    migrate_chunk_messages: int = Field(20, description="Messages per extraction chunk when migrating a thread.")
    migrate_message_chars: int = Field(
        2000,
        description="Longer messages are split into parts of at most this many characters when migrating, never truncated.",
    )

    @property
    def assistants_mode(self) -> Literal["bridge", "passthrough"]:
        """OpenAI itself no longer serves Assistants (shut down 2026-08-26): bridge there by default."""
        if self.assistants != "auto":
            return self.assistants
        return "bridge" if "api.openai.com" in self.upstream_url else "passthrough"

    @field_validator("secret", "admin_token", "llm_api_key", "tenant", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        """An empty variable (a template that renders ``""``) means unset, never an empty secret."""
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("redact_patterns")
    @classmethod
    def _compiles(cls, value: dict[str, str]) -> dict[str, str]:
        """Names become markers and metric labels: lowercase identifiers; each regex must compile."""
        for name, pattern in value.items():
            if not re.fullmatch(r"[a-z][a-z0-9_]{0,31}", name):
                raise ValueError(f"redact_patterns: name {name!r} must be a lowercase identifier (at most 32)")
            try:
                if re.compile(pattern).fullmatch(""):
                    raise ValueError(f"redact_patterns: the pattern of {name!r} matches the empty string")
            except re.error as exc:
                raise ValueError(f"redact_patterns: the pattern of {name!r} is not a regex ({exc})") from None
        return value

    @field_validator("data_dir", "embed_model_path", "rerank_model_path")
    @classmethod
    def _expand(cls, value: Path | None) -> Path | None:
        return value.expanduser() if value is not None else None

    @field_validator("rerank_model_path")
    @classmethod
    def _is_dir(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_dir():
            raise ValueError(f"MEMPROXY_RERANK_MODEL_PATH={value} is not a directory (unset it: no rerank stage)")
        return value


def split_problem(settings: Settings) -> str | None:
    """Why these settings would silently split one user's data across replicas, or None.

    State (threads, jobs, erasure fences) and memories must be shared alike: Redis with per-replica
    embedded memories, or a shared Qdrant with per-replica SQLite state, gives each replica its own
    half of a user. Allowed only when declared single-replica (``MEMPROXY_SINGLE_REPLICA``).
    """
    if settings.single_replica:
        return None
    if settings.redis_url and not settings.qdrant_url:
        return (
            "MEMPROXY_REDIS_URL is set but MEMPROXY_QDRANT_URL is not: state would be shared through Redis while "
            "each replica keeps its own embedded memories, splitting users' data across replicas. Set "
            "MEMPROXY_QDRANT_URL to the Qdrant server every replica uses, or MEMPROXY_SINGLE_REPLICA=true if this "
            "process is the only one on this Redis."
        )
    if settings.qdrant_url and not settings.redis_url:
        return (
            "MEMPROXY_QDRANT_URL is set but MEMPROXY_REDIS_URL is not: memories would be shared through Qdrant while "
            "each replica keeps its own SQLite state (threads, jobs, erasure fences), splitting users' data across "
            "replicas. Set MEMPROXY_REDIS_URL to the Redis every replica uses, or MEMPROXY_SINGLE_REPLICA=true if "
            "this process is the only one on this Qdrant collection."
        )
    return None


@lru_cache
def get_settings() -> Settings:
    return Settings()
