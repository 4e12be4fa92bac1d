"""Offline OpenAI-compatible upstream: a deterministic model behind the real API's shapes.

``create_app()`` returns a fresh Starlette app (its own state); ``memproxy emulator`` serves one.
See ``model.py`` for how it answers and ``control.py`` for request recording and fault injection.
"""

from proxy.emulator.app import create_app

__all__ = ["create_app"]
