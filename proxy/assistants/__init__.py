"""The Assistants v2 engine: served by memproxy on Responses + Conversations (bridge), and by the emulator."""
