"""memproxy: long-term memory for OpenAI API applications, as a transparent reverse proxy."""

__version__ = "0.1.0"
