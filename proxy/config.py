"""Settings, read from the environment (prefix ``MEMPROXY_``) so a sidecar needs no config file.

Every field here is documented in the README's configuration table; keep the two in step.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MEMPROXY_", extra="ignore")

    # --- serving -------------------------------------------------------------------------------
    upstream_url: str = Field("https://api.openai.com/v1", description="Base URL of the upstream OpenAI API.")
    host: str = Field("127.0.0.1", description="Address the proxy listens on.")
    port: int = Field(8080, description="Port the proxy listens on.")
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    data_dir: Path = Field(Path("~/.local/share/memproxy"), description="Embedded state and vectors live here.")

    # --- upstream connection -------------------------------------------------------------------
    connect_timeout: float = Field(5.0, description="Seconds to open a connection to the upstream.")
    read_timeout: float | None = Field(
        None, description="Seconds between two upstream bytes; unset means none (streams may idle)."
    )
    write_timeout: float = Field(60.0, description="Seconds to send one chunk of the request body upstream.")
    pool_timeout: float = Field(10.0, description="Seconds to wait for a free upstream connection.")
    max_connections: int = Field(1000, description="Upper bound on open upstream connections.")
    keepalive_interval: float = Field(
        15.0, description="Seconds of upstream silence on an SSE stream before a `: keepalive` comment."
    )

    # --- identity ------------------------------------------------------------------------------
    secret: str | None = Field(
        None, description="Server secret for tenant HMACs; generated under data_dir when unset (one replica)."
    )
    tenant: str | None = Field(None, description="Fixed tenant id (a sidecar whose API keys rotate).")
    admin_token: str | None = Field(None, description="Bearer token for admin calls of the memory API.")

    # --- storage -------------------------------------------------------------------------------
    redis_url: str | None = Field(None, description="Redis for state and jobs; unset: SQLite under data_dir.")
    qdrant_url: str | None = Field(None, description="Qdrant server; unset: embedded Qdrant Edge under data_dir.")
    qdrant_api_key: str | None = None
    collection: str = Field("memproxy_memories", description="Qdrant collection name.")

    # --- embeddings ----------------------------------------------------------------------------
    embedder: Literal["local", "upstream"] = Field("local", description="fastembed locally, or upstream /v1/embeddings.")
    embed_model: str = Field("sentence-transformers/all-MiniLM-L6-v2", description="Embedding model name.")
    embed_model_path: Path | None = Field(None, description="Local model directory: loads with no download.")
    upstream_embed_model: str = Field("text-embedding-3-small", description="Model for the upstream embedder.")

    @field_validator("data_dir", "embed_model_path")
    @classmethod
    def _expand(cls, value: Path | None) -> Path | None:
        return value.expanduser() if value is not None else None


@lru_cache
def get_settings() -> Settings:
    return Settings()
