"""The Assistants v2 engine: served by memproxy on Responses + Conversations (bridge), and by the emulator.

How the API maps (one engine, two upstreams: HTTP for the bridge, in-process for the emulator):

- assistant: a record in memproxy's state store, per tenant.
- thread: an upstream conversation (thread metadata is the conversation's metadata) plus a small
  tenant-scoped record; deleting the thread deletes the conversation.
- message: a conversation item (same id); metadata, creation time, run and assistant kept in the
  state store under the item id.
- run: one upstream response per leg (``conversation`` = the thread's), ``background: true`` when
  polled, translated event by event when streamed; ``requires_action`` = function calls, tool
  outputs go back as ``function_call_output`` items. The run record (state store) holds the current
  response id, so any replica and any restart can carry on with it.
- run steps: ``message_creation`` and ``tool_calls`` (function) steps, stored as records.
- instructions: the run's ``instructions`` or else the assistant's, then ``additional_instructions``,
  then what the memory hook adds (:class:`~proxy.assistants.hooks.RunHooks`), blank-line separated.

Unsupported (each refused with a 400 naming it, never silently dropped):

- tools ``file_search`` and ``code_interpreter`` (on assistants, runs, create-and-run, and as a
  forced ``tool_choice``), and non-empty ``tool_resources`` (assistants, threads, create-and-run);
- message ``attachments``;
- run ``max_prompt_tokens``, ``truncation_strategy`` other than ``auto`` (``last_messages``), and
  ``include[]`` (file_search result content).

Differences worth knowing: ``max_completion_tokens`` becomes ``max_output_tokens`` (so a run ends
``incomplete`` with reason ``max_completion_tokens`` when the upstream stops there); an ``error``
stream event carries the spec's bare Error object; runs waiting for tool outputs expire after 10
minutes, as on OpenAI.
"""
