"""Secrets are never remembered: what a memory would store is redacted first.

:class:`Redactor` finds credentials and payment data in a text and replaces each with a typed marker
(``[redacted:card]``), before the text is stored, embedded (dense vector) or turned into BM25 terms,
whoever writes it (the extraction worker, the memory API's remember and update). The marker keeps the
sentence readable ("User's card is [redacted:card]") and tells the model that something was there.

What it finds (``KINDS``), each on its shape and, where the shape alone is too common, a check:

- API keys and tokens by their documented prefixes: OpenAI (``sk-``, ``sk-proj-``), Anthropic
  (``sk-ant-``), AWS access key ids (``AKIA``...) and secret access keys (40 characters after "aws" or
  "secret access key"), GitHub (``ghp_``, ``github_pat_``...), Slack (``xox*-``), Stripe
  (``sk_live_``, ``rk_live_``...), Google (``AIza``), JWTs, PEM private keys, ``Bearer`` tokens, the
  password of a ``scheme://user:password@host`` URL, and any other run of 32+ key characters mixing
  upper case, lower case and digits (what random keys look like and words, ids and hashes do not);
- "password / passcode / passphrase / PIN / secret / token / API key" phrases ("my password is
  hunter2", "PIN: 4821", "token=..."): the value only, the words stay. Values that read as English
  ("my password is too long", "the token is expired") are kept;
- payment card numbers: 13 to 19 digits, grouped as cards are (or not at all), starting 2 to 6 and
  Luhn-valid; a CVV after a card number or named as one; IBANs (checked per country and mod 97);
  US social security numbers (``123-45-6789`` shaped and valid, or named as one).

Checksums come from ``python-stdnum`` (Luhn, IBAN with each country's length and format, SSN rules).
Scanners for secrets in code (detect-secrets) were considered: they read source lines, not prose, and
miss the phrasing users type ("my password is ..."), so the patterns here are our own.

The operator adds patterns (``MEMPROXY_REDACT_PATTERNS``: name -> regex, each match replaced by
``[redacted:<name>]``) or turns redaction off (``MEMPROXY_REDACT_SECRETS=false``). Nothing here logs:
the caller counts the kinds (``memproxy_redactions_total``), never the values.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial

from stdnum import iban, luhn
from stdnum.us import ssn

MARKER = "[redacted:{}]"
_MARKED = re.compile(r"\[redacted:[a-z0-9_]+\]")

KINDS = (
    "private_key",
    "jwt",
    "openai_key",
    "anthropic_key",
    "aws_key",
    "github_token",
    "slack_token",
    "stripe_key",
    "google_api_key",
    "bearer_token",
    "url_password",
    "token",
    "password",
    "pin",
    "secret",
    "card",
    "cvv",
    "iban",
    "ssn",
)
"""The kinds of secret found by the built-in detectors (the marker's name and the metric's label)."""

#: Words that, after "password is" / "token is", describe the secret instead of being it.
_PLAIN_WORDS = frozenset(
    """a an the my your our their his her its this that these those it not no none never still also just
    too very so quite really always already now same different new old wrong right correct incorrect
    invalid valid expired missing required optional strong weak long short simple easy hard secure
    insecure safe unsafe stored saved set reset changed updated written hidden encrypted hashed private
    public secret empty blank unknown forgotten lost stolen leaked compromised shared needed used working
    broken case sensitive something nothing being going about how what when where which who why there
    here in on at for to from of by with as if but and or out up down over off gone back more less fine good
    bad ok okay great terrible awful complex complicated unique random temporary default generated known
    obvious easy-to-guess guessable memorable ready enough different required sent emailed written down
    locked expiring due stale outdated case-sensitive""".split()  # noqa: SIM905
)

_KEYCHARS = r"A-Za-z0-9_\-"


def _mixed(token: str) -> bool:
    """Upper case, lower case and a digit: what random keys look like, and words and ids do not."""
    return any(c.isupper() for c in token) and any(c.islower() for c in token) and any(c.isdigit() for c in token)


def _luhn_card(number: str) -> bool:
    digits = re.sub(r"\D", "", number)
    if not 13 <= len(digits) <= 19 or digits[0] not in "23456":
        return False
    separators = set(re.findall(r"\D", number))
    if len(separators) > 1:
        return False
    if separators:  # grouped as cards are printed: 4-4-4-4(-3), 4-6-5 / 4-6-4 (Amex, Diners), 4-4-4-1..4
        groups = [len(group) for group in re.split(r"\D", number)]
        if not (groups[:2] == [4, 6] and len(groups) == 3 or all(n == 4 for n in groups[:-1])):
            return False
    return luhn.is_valid(digits)


def _valid_ssn(number: str) -> bool:
    return bool(ssn.is_valid(number))


def _valid_iban(number: str) -> bool:
    return bool(iban.is_valid(number))


def _credential(value: str) -> bool:
    """A value after "password is": kept when it reads as a plain English word describing it."""
    value = value.strip("\"'`")
    return bool(value) and value.lower().rstrip(".!?,;:") not in _PLAIN_WORDS


def _unwordlike(value: str) -> bool:
    """A digit, a symbol, or capitals after the first letter: not a word that could follow "password"."""
    return bool(re.search(r"\d|[^\w\s]|_|.[A-Z]", value))


def _strong(value: str) -> bool:
    """A value after "secret is" / "token is" / "Bearer": only key-like ones (prose uses these words a lot)."""
    value = value.strip("\"'`")
    return len(value) >= 8 and bool(re.search(r"\d", value)) and bool(re.search(r"[A-Za-z]", value))


Check = Callable[[str], bool]


@dataclass(frozen=True)
class Detector:
    """One kind of secret: its pattern, the group replaced (``value`` when the pattern has one, else
    the whole match) and an optional check of that group's text. ``trim``: a group that fails its
    check is tried again without its trailing space- or dash-separated parts ("4111 1111 1111 1111
    123" is a card number and its CVV)."""

    kind: str
    pattern: re.Pattern[str]
    check: Check | None = None
    group: str | int = 0
    trim: bool = False
    hints: tuple[str, ...] = ()
    """Lower-case substrings one of which any match contains: a text with none of them is skipped
    (a substring test costs a fraction of a regex scan, and most texts hold no secret at all)."""


def _d(
    kind: str,
    pattern: str,
    check: Check | None = None,
    flags: int = 0,
    *,
    trim: bool = False,
    hints: tuple[str, ...] = (),
) -> Detector:
    compiled = re.compile(pattern, flags)
    return Detector(kind, compiled, check, "value" if "value" in compiled.groupindex else 0, trim, hints)


_VALUE = r"(?P<value>\"[^\"\n]{1,100}\"|'[^'\n]{1,100}'|(?!\[redacted:)[^\s\"',;]*[^\s\"',;.!?:])"
_IS = r"(?:\s*(?:[:=]|=>)\s*|\s+(?:is|was|=)\s*:?\s+|\s*:\s+)"
_FOR = r"(?:\s+(?:for|to|of|on|at)\s+(?:my\s+|the\s+|our\s+)?[\w.@-]{1,40}(?:\s+account)?)?"

DETECTORS: tuple[Detector, ...] = (
    _d(
        "private_key",
        r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----.*?(?:-----END (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----|\Z)",
        flags=re.DOTALL,
        hints=("private key",),
    ),
    _d("jwt", r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*", hints=("eyj",)),
    _d("anthropic_key", rf"\bsk-ant-[{_KEYCHARS}]{{20,}}", hints=("sk-ant-",)),
    _d("openai_key", rf"\bsk-(?:proj-|svcacct-|admin-)?[{_KEYCHARS}]{{20,}}", _mixed, hints=("sk-",)),
    _d("aws_key", r"\b(?:AKIA|ASIA|ABIA|ACCA)[0-9A-Z]{16}\b", hints=("akia", "asia", "abia", "acca")),
    _d(
        "aws_key",
        r"(?:aws|secret[ _-]?access[ _-]?key)[\w ]{0,30}?[\s:=\"']+(?P<value>[A-Za-z0-9/+]{40})(?![A-Za-z0-9/+=])",
        flags=re.IGNORECASE,
        hints=("aws", "secret"),
    ),
    _d(
        "github_token",
        r"\b(?:gh[pousr]_[A-Za-z0-9]{30,255}|github_pat_[A-Za-z0-9_]{22,255})\b",
        hints=("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"),
    ),
    _d("slack_token", r"\bxox[abposre]-[A-Za-z0-9-]{10,}|\bxapp-\d-[A-Za-z0-9-]{10,}", hints=("xox", "xapp-")),
    _d("stripe_key", r"\b(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{16,}", hints=("k_live_", "k_test_")),
    _d("google_api_key", r"\bAIza[0-9A-Za-z_-]{35}(?![0-9A-Za-z_-])", hints=("aiza",)),
    _d("bearer_token", r"\bbearer\s+(?P<value>[A-Za-z0-9._~+/-]{16,}=*)", _strong, re.IGNORECASE, hints=("bearer",)),
    _d("url_password", r"(?<=://)[^\s:/@]{1,64}:(?P<value>[^\s@/]{1,128})@", hints=("://",)),
    _d(
        "token",
        r"(?<![A-Za-z0-9+/_=-])[A-Za-z0-9+/_-]{32,}={0,2}(?![A-Za-z0-9+/_=-])",
        _mixed,
    ),
    _d("card", r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])", _luhn_card, trim=True),
    _d(
        "cvv",
        r"(?:\b(?:cvv2?|cvc2?|csc|cid|security code|card verification(?: code| value)?)\b"
        r"|\[redacted:card\](?:[\s,;/]+(?:exp\w*\.?:?\s*)?\d{2}\s*/\s*\d{2,4})?)"
        r"[\s,;:=/#-]*(?:(?:is|was|number|no\.?)\s+)?(?:cvv2?\W*|cvc2?\W*)?(?P<value>\d{3,4})\b",
        flags=re.IGNORECASE,
        hints=("cvv", "cvc", "csc", "cid", "security code", "verification", "[redacted:card]"),
    ),
    _d("iban", r"\b[A-Z]{2}\d{2}(?:[ ]?[A-Z0-9]{4}){2,7}(?:[ ]?[A-Z0-9]{1,3})?\b", _valid_iban, trim=True),
    _d(
        "ssn",
        r"\b(?:ssn|social security(?: number| no\.?)?)\W{0,3}(?:(?:is|was|number)\s+)?(?P<value>\d{3}[ -]?\d{2}[ -]?\d{4})\b",
        _valid_ssn,
        re.IGNORECASE,
        hints=("ssn", "social security"),
    ),
    _d("ssn", r"\b\d{3}-\d{2}-\d{4}\b", _valid_ssn),
    _d(
        "password",
        rf"\b(?:password|passwd|pwd|pw|passcode|passphrase|pass ?word)s?{_FOR}{_IS}{_VALUE}",
        _credential,
        re.IGNORECASE,
        hints=("pass", "pw"),
    ),
    _d(  # "wifi MyNet, password Tr0ub4dor": no "is", so only a value that cannot be an English word
        "password",
        r"\b(?:password|passwd|pwd|passcode|passphrase)\s+(?P<value>(?!\[redacted:)[^\s\"',;]*[^\s\"',;.!?:])",
        _unwordlike,
        re.IGNORECASE,
        hints=("pass", "pwd"),
    ),
    _d(
        "pin",
        rf"\b(?:pin|(?:door|alarm|gate|lock|garage|safe|entry|unlock|access) code)(?: code| number)?{_FOR}{_IS}"
        r"(?P<value>\d{4,8})\b",
        flags=re.IGNORECASE,
        hints=("pin", " code"),
    ),
    _d(
        "secret",
        rf"\b(?:secret|token|api[ _-]?key|access[ _-]?key|client[ _-]?secret|private[ _-]?key|auth[ _-]?code)"
        rf"{_FOR}{_IS}{_VALUE}",
        _strong,
        re.IGNORECASE,
        hints=("secret", "token", "key", "auth"),
    ),
)
"""Applied in this order: specific shapes before generic ones, so a key is named for what it is."""


@dataclass(frozen=True)
class Redacted:
    """A text with its secrets replaced, and the kind of each replacement (in order, repeated)."""

    text: str
    kinds: tuple[str, ...] = ()

    def __repr__(self) -> str:  # never print the text
        return f"Redacted(kinds={self.kinds})"


INLINE_CHARS = 256
"""Characters up to which redaction runs on the event loop (a sentence costs about 10 us)."""


class Redactor:
    """The built-in detectors (unless ``enabled`` is false) and the operator's own patterns."""

    def __init__(self, *, enabled: bool = True, extra: Mapping[str, str] | None = None) -> None:
        custom = tuple(Detector(name, re.compile(pattern)) for name, pattern in (extra or {}).items())
        self.detectors: tuple[Detector, ...] = (DETECTORS if enabled else ()) + custom

    def redact(self, text: str) -> Redacted:
        """``text`` with every secret replaced by ``[redacted:<kind>]``."""
        found: list[str] = []
        lowered = text.lower()
        for detector in self.detectors:
            if detector.hints and not any(hint in lowered for hint in detector.hints):
                continue
            replaced = detector.pattern.sub(partial(_replace, detector, found=found), text)
            if replaced != text:
                text, lowered = replaced, replaced.lower()
        return Redacted(text, tuple(found))

    async def redact_off_loop(self, texts: Sequence[str]) -> list[Redacted]:
        """:meth:`redact` of each text, in order: inline for short texts, on a worker thread past
        :data:`INLINE_CHARS` in all (up to about a millisecond of regex scans per 2,000 characters)."""
        if sum(map(len, texts)) <= INLINE_CHARS:
            return [self.redact(text) for text in texts]
        return await asyncio.to_thread(lambda: [self.redact(text) for text in texts])


def _replace(detector: Detector, match: re.Match[str], *, found: list[str]) -> str:
    whole = match.group(0)
    start, end = match.span(detector.group)
    start, end = start - match.start(), end - match.start()
    value = whole[start:end]
    if not value or _MARKED.fullmatch(value):
        return whole
    if detector.check is not None:
        end = start + _checked_length(detector, value)
        if end == start:
            return whole
    found.append(detector.kind)
    return whole[:start] + MARKER.format(detector.kind) + whole[end:]


def _checked_length(detector: Detector, value: str) -> int:
    """How much of ``value`` passes the detector's check (0: none): all of it, or with ``trim`` its
    longest prefix ending before a space or a dash."""
    assert detector.check is not None
    if detector.check(value):
        return len(value)
    if detector.trim:
        for cut in reversed([m.start() for m in re.finditer(r"[ -]+", value)]):
            if detector.check(value[:cut]):
                return cut
    return 0
