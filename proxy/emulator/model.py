"""The emulator's deterministic "model": pure functions from a prompt to an answer, no HTTP.

Chat Completions, Responses (and later the emulated Assistants engine) translate their requests
into a :class:`Prompt` and their answers from a :class:`Completion`, so every API answers alike and
tests can predict the output exactly. Behaviour:

- Deterministic: the same prompt always gives the same answer; nothing is random or time-based.
- Plain answer: ``You said: "<last user message>".`` followed, when the prompt has instructions
  (the ``instructions`` parameter, system and developer messages, in that order, joined by a blank
  line), by `` Instructions: "<all of them, in full>".`` With no user message it starts
  ``You said nothing.``
- Tool results: when tool outputs follow the last user message, each is reported as
  `` Tool <name> returned: "<output>".`` (after ``You said``); the model then never calls a tool
  again, so agent loops end.
- Tool calls: a user message containing ``call <tool_name>`` (case-insensitive, a tool that is
  offered) yields a call of that tool, one per mention in order (only the first when
  ``parallel_tool_calls`` is false). ``tool_choice`` ``required`` calls the first offered tool
  when none is mentioned, a named tool choice always calls that tool, ``none`` never calls.
  Arguments conform to the tool's parameter schema; their strings are the words after the tool's
  name up to the sentence end or the next ``call`` (a leading for/with/about/on/to and a trailing
  and/then dropped), else the whole user message: ``call get_weather for Paris`` ->
  ``{"city": "Paris"}``.
- Tool calls win over structured output. ``n`` and sampling parameters change nothing: there is
  one answer, always the same.
- Structured output: ``json_schema`` returns an instance of the schema; ``json_object`` returns
  ``{"facts": [...], "reply": "<plain answer>"}``. Strings (and each element of string arrays)
  are filled from the user's first-person statements: sentences of user messages containing
  I / me / my / mine / myself / we / our / ours, questions excluded; transcript lines labelled
  ``assistant:``/``system:`` are skipped and a ``user:`` label is dropped. With no such statement,
  arrays stay empty and strings get the last user message. An ``enum`` takes the value its text
  names ("I prefer tea" -> ``preference``), else its first value. See ``jsonfill`` for the shape rules.
- Tokens: one per word or punctuation mark (``count_tokens``), used for every ``usage`` block.
- Streaming splits text at word boundaries (``chunk_text``): one delta per word with its
  leading whitespace.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from proxy.emulator.jsonfill import build_instance

_TOKEN = re.compile(r"\w+|[^\w\s]")
_WORD_CHUNK = re.compile(r"\s*\S+")
_FIRST_PERSON = re.compile(r"\b(i|me|my|mine|myself|we|our|ours)\b", re.IGNORECASE)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_SKIP_LABEL = re.compile(r"^\s*(assistant|system|ai|bot)\s*:", re.IGNORECASE)
_USER_LABEL = re.compile(r"^\s*(user|human)\s*:\s*", re.IGNORECASE)
_ARG_LEAD = re.compile(r"^\s*(?:for|with|about|on|to)\b\s*", re.IGNORECASE)
_ARG_TAIL = re.compile(r"\s*\b(?:and|then|and then)\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class Turn:
    """One entry of the context.

    ``role``: system | developer | user | assistant | tool_call | tool. A ``tool_call`` carries the
    call's ``name``, ``call_id`` and its arguments as ``text``; a ``tool`` turn is a tool's output
    (``text``) for ``call_id`` (``name`` optional: it is looked up from the matching call).
    """

    role: str
    text: str = ""
    name: str | None = None
    call_id: str | None = None


@dataclass(frozen=True)
class Tool:
    """A function the model may call."""

    name: str
    parameters: dict[str, Any] | None = None


@dataclass(frozen=True)
class OutputFormat:
    """``kind``: text | json_object | json_schema (``schema`` set for the last)."""

    kind: str = "text"
    schema: dict[str, Any] | None = None


@dataclass(frozen=True)
class Prompt:
    """Everything the model sees. ``tool_choice``: auto | none | required; ``forced_tool`` names a tool."""

    turns: Sequence[Turn]
    instructions: str | None = None
    tools: Sequence[Tool] = ()
    tool_choice: str = "auto"
    forced_tool: str | None = None
    parallel_tool_calls: bool = True
    output_format: OutputFormat = field(default_factory=OutputFormat)


@dataclass(frozen=True)
class Call:
    """A function call the model makes; ``arguments`` is a JSON string."""

    name: str
    arguments: str


@dataclass(frozen=True)
class Completion:
    """The model's answer: text, or function calls (then ``text`` is None)."""

    text: str | None
    calls: tuple[Call, ...] = ()


def respond(prompt: Prompt) -> Completion:
    """Answer ``prompt`` deterministically (see the module docstring for the rules)."""
    calls = plan_calls(prompt)
    if calls:
        return Completion(text=None, calls=tuple(calls))
    reply = plain_reply(prompt)
    kind, statements = prompt.output_format.kind, first_person_statements(prompt.turns)
    if kind == "json_schema":
        value = build_instance(prompt.output_format.schema or {}, statements, last_user_text(prompt.turns) or reply)
    elif kind == "json_object":
        value = {"facts": statements, "reply": reply}
    else:
        return Completion(text=reply)
    return Completion(text=json.dumps(value, ensure_ascii=False))


def plain_reply(prompt: Prompt) -> str:
    """``You said: "...".`` + tool results + ``Instructions: "...".``"""
    user = last_user_text(prompt.turns)
    parts = [f'You said: "{user}".' if user is not None else "You said nothing."]
    parts += [f'Tool {name} returned: "{output}".' for name, output in tool_results(prompt.turns)]
    instructions = all_instructions(prompt)
    if instructions:
        parts.append(f'Instructions: "{instructions}".')
    return " ".join(parts)


def all_instructions(prompt: Prompt) -> str:
    """The ``instructions`` parameter, then system/developer messages, joined by a blank line."""
    texts = [prompt.instructions] if prompt.instructions else []
    texts += [turn.text for turn in prompt.turns if turn.role in ("system", "developer") and turn.text]
    return "\n\n".join(texts)


def last_user_text(turns: Sequence[Turn]) -> str | None:
    """Text of the last user message, or None when there is none."""
    return next((turn.text for turn in reversed(turns) if turn.role == "user"), None)


def tool_results(turns: Sequence[Turn]) -> list[tuple[str, str]]:
    """``(tool name, output)`` for tool outputs after the last user message."""
    names = {turn.call_id: turn.name for turn in turns if turn.role == "tool_call"}
    results: list[tuple[str, str]] = []
    for turn in turns:
        if turn.role == "user":
            results = []
        elif turn.role == "tool":
            results.append((turn.name or names.get(turn.call_id) or turn.call_id or "tool", turn.text))
    return results


def plan_calls(prompt: Prompt) -> list[Call]:
    """The function calls the prompt asks for (none once tool results follow the last user message)."""
    tools = {tool.name: tool for tool in prompt.tools}
    if not tools or prompt.tool_choice == "none" or tool_results(prompt.turns):
        return []
    text = last_user_text(prompt.turns) or ""
    mentions = _mentions(text, tools)
    if prompt.forced_tool in tools:
        mentions = [m for m in mentions if m[0] == prompt.forced_tool] or [(prompt.forced_tool, "")]
    elif not mentions and prompt.tool_choice == "required":
        mentions = [(next(iter(tools)), "")]
    if not prompt.parallel_tool_calls:
        mentions = mentions[:1]
    return [_call(tools[name], rest or text) for name, rest in mentions]


def _mentions(text: str, tools: dict[str, Tool]) -> list[tuple[str, str]]:
    """``(tool name, text after the mention up to the sentence end)`` in order of appearance."""
    found: list[tuple[int, str, str]] = []
    for name in tools:
        for match in re.finditer(rf"\bcall\s+(?:the\s+)?`?{re.escape(name)}`?(?!\w)", text, re.IGNORECASE):
            rest = re.split(r"[.!?\n]|\bcall\b", text[match.end() :], maxsplit=1, flags=re.IGNORECASE)[0]
            rest = _ARG_TAIL.sub("", _ARG_LEAD.sub("", rest.strip(" ,;:"))).strip(" ,;:")
            found.append((match.start(), name, rest))
    return [(name, rest) for _, name, rest in sorted(found)]


def _call(tool: Tool, argument_text: str) -> Call:
    schema = tool.parameters or {"type": "object", "properties": {}}
    arguments = build_instance(schema, [argument_text] if argument_text else [], argument_text)
    return Call(name=tool.name, arguments=json.dumps(arguments, ensure_ascii=False))


def first_person_statements(turns: Sequence[Turn]) -> list[str]:
    """Sentences of user messages that speak in the first person (see module docstring)."""
    statements: list[str] = []
    for turn in turns:
        if turn.role != "user":
            continue
        for line in turn.text.splitlines():
            if _SKIP_LABEL.match(line):
                continue
            for sentence in _SENTENCE_END.split(_USER_LABEL.sub("", line).strip()):
                sentence = sentence.strip()
                first_person = sentence and not sentence.endswith("?") and _FIRST_PERSON.search(sentence)
                if first_person and sentence not in statements:
                    statements.append(sentence)
    return statements


def count_tokens(text: str) -> int:
    """Emulated token count: one token per word or punctuation mark."""
    return len(_TOKEN.findall(text))


def prompt_tokens(prompt: Prompt) -> int:
    """Tokens of everything the model reads: instructions and every turn's text."""
    return count_tokens(prompt.instructions or "") + sum(count_tokens(turn.text) for turn in prompt.turns)


def completion_tokens(completion: Completion) -> int:
    """Tokens of the answer: its text or its calls' names and arguments."""
    if completion.text is not None:
        return count_tokens(completion.text)
    return sum(count_tokens(call.name) + count_tokens(call.arguments) for call in completion.calls)


def chunk_text(text: str) -> list[str]:
    """Split text into stream deltas, one word each with its leading whitespace; joins back exactly."""
    chunks = _WORD_CHUNK.findall(text)
    tail = text[sum(map(len, chunks)) :]
    if not chunks:
        return [text] if text else []
    chunks[-1] += tail
    return chunks
