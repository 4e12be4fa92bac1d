"""Long-term memory: models, vector stores (Qdrant Edge / server), embedders, scoring, the service.

Import submodules directly (``proxy.memory.service``, ...); this package imports nothing heavy.
"""
