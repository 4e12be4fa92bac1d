"""Secrets in a memory's text become typed markers (proxy/memory/redact.py), and ordinary text survives.

Samples are fake but shaped like the real thing: Luhn-valid test card numbers, IBANs with valid check
digits, keys with their providers' prefixes and lengths. Keys are assembled from parts so that no
secret scanner mistakes this file for a leak.
"""

from __future__ import annotations

import pytest
from conftest import SHARED

from proxy.config import Settings
from proxy.memory.redact import KINDS, Redactor

RANDOM = "Xq7Lm2Rt9Vb4Nc8Kd3Hf6Jp1Ws5Zy0Ga"  # 34 key characters, mixed case and digits
OPENAI_KEY = "sk-" + "proj-" + RANDOM + "_" + RANDOM[::-1] + "-" + RANDOM[:20]
LEGACY_OPENAI_KEY = "sk-" + RANDOM + "T3BlbkFJ" + RANDOM[:6]
ANTHROPIC_KEY = "sk-" + "ant-api03-" + RANDOM + RANDOM[:10] + "-AA"
AWS_ID = "AKIA" + "IOSFODNN7EXAMPLE"
AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/" + "bPxRfiCYEXAMPLEKEY"
GITHUB = "ghp_" + RANDOM + "Ab"
GITHUB_PAT = "github_pat_" + "11ABCDEFG0" + RANDOM + "_" + RANDOM
SLACK = "xoxb-" + "2401234567890-2412345678901-" + RANDOM[:24]
STRIPE = "sk_" + "live_" + RANDOM[:24]
GOOGLE = "AIza" + "SyD" + RANDOM[:32]
JWT = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9"
    ".eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkFubiJ9"
    ".SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"
)
PEM = (
    "-----BEGIN "
    + "RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA0Z3VS5JJcds3xfn/ygWyF8PbnGy0AHB7\n-----END RSA PRIVATE KEY-----"
)
VISA = "4111 1111 1111 1111"  # a public test card number, Luhn-valid
MASTERCARD = "5555-5555-5555-4444"
AMEX = "3782 822463 10005"
IBAN_DE = "DE89 3704 0044 0532 0130 00"
IBAN_GB = "GB82WEST12345698765432"
SSN = "536-22-1234"


@pytest.fixture(scope="module")
def redactor() -> Redactor:
    return Redactor()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"My OpenAI key is {OPENAI_KEY}", "My OpenAI key is [redacted:openai_key]"),
        (f"old key {LEGACY_OPENAI_KEY}.", "old key [redacted:openai_key]."),
        (f"claude: {ANTHROPIC_KEY}", "claude: [redacted:anthropic_key]"),
        (f"AWS id {AWS_ID}, aws secret {AWS_SECRET}", "AWS id [redacted:aws_key], aws secret [redacted:aws_key]"),
        (f"aws_secret_access_key = {AWS_SECRET}", "aws_secret_access_key = [redacted:aws_key]"),
        (f"tokens {GITHUB} and {GITHUB_PAT}", "tokens [redacted:github_token] and [redacted:github_token]"),
        (f"the bot uses {SLACK}", "the bot uses [redacted:slack_token]"),
        (f"Stripe: {STRIPE}", "Stripe: [redacted:stripe_key]"),
        (f"maps key {GOOGLE} works", "maps key [redacted:google_api_key] works"),
        (f"session {JWT}", "session [redacted:jwt]"),
        (f"deploy key:\n{PEM}\nthanks", "deploy key:\n[redacted:private_key]\nthanks"),
        ("Authorization: Bearer abc123def456ghi789jkl0", "Authorization: Bearer [redacted:bearer_token]"),
        (
            "db is postgres://app:s3cr3t-pw@db.internal:5432/app",
            "db is postgres://app:[redacted:url_password]@db.internal:5432/app",
        ),
        (f"key {RANDOM}{RANDOM}", "key [redacted:token]"),
        ("my password is hunter2", "my password is [redacted:password]"),
        ("My password is swordfish.", "My password is [redacted:password]."),
        ("password: correct-horse-battery", "password: [redacted:password]"),
        ("The wifi password for the office is Tr0ub4dor&3", "The wifi password for the office is [redacted:password]"),
        ('my passphrase is "open sesame now"', "my passphrase is [redacted:password]"),
        ("passcode=8812", "passcode=[redacted:password]"),
        ("my PIN is 4821", "my PIN is [redacted:pin]"),
        ("The garage door code is 7305.", "The garage door code is [redacted:pin]."),
        ("wifi HomeNet5G, password Tr0ub4dor", "wifi HomeNet5G, password [redacted:password]"),
        ("pw: gr33n-apple", "pw: [redacted:password]"),
        ("The client secret is a8f3kQ92zLm", "The client secret is [redacted:secret]"),
        ("my api key: k3y-0f-m1ne-2024", "my api key: [redacted:secret]"),
        (f"my card is {VISA}", "my card is [redacted:card]"),
        (f"card {MASTERCARD} exp 12/27 cvv 123", "card [redacted:card] exp 12/27 cvv [redacted:cvv]"),
        (f"pay with {VISA} 737", "pay with [redacted:card] [redacted:cvv]"),
        (f"Amex {AMEX}, CVC: 4455", "Amex [redacted:card], CVC: [redacted:cvv]"),
        ("4111111111111111", "[redacted:card]"),
        (f"My IBAN is {IBAN_DE} for the rent", "My IBAN is [redacted:iban] for the rent"),
        (f"UK account {IBAN_GB}.", "UK account [redacted:iban]."),
        (f"SSN {SSN}", "SSN [redacted:ssn]"),
        ("my social security number is 536221234", "my social security number is [redacted:ssn]"),
    ],
)
def test_each_secret_becomes_a_typed_marker(redactor: Redactor, text: str, expected: str) -> None:
    result = redactor.redact(text)
    assert result.text == expected
    assert result.kinds and set(result.kinds) <= set(KINDS)
    assert redactor.redact(result.text).text == result.text, "markers are never redacted again"
    assert repr(result) == f"Redacted(kinds={result.kinds})", "the repr never shows the text"


@pytest.mark.parametrize(
    "text",
    [
        "User was born on 1987-04-12 and has 2 kids aged 7 and 9.",
        "Call me at +1 415 555 0100 or 555-867-5309, or +33 6 12 34 56 78.",
        "Order #112-7781234-5566120 and order ORD-2024-118734 arrived on 15/03/2024.",
        "My flight LH 1234 leaves at 10:45 from gate B22; seat 14C.",
        "Tracking number 1Z999AA10123456784, invoice 2024-000123.",
        "I collect subway tokens and gave her a token of appreciation.",
        "The token limit is 4096 tokens; the token is 4096 characters long.",
        "My password is too long and my password is not secure.",
        "My secret is that I love cheese. Password managers are great.",
        "The PIN is the same as before.",
        "I use a password manager, password reset links and Passwords.app; my pwd is fine.",
        "The door code changes monthly; my zip code is 94107.",
        "Commit 3f786850e387550fdab836ed7e6dc881de23001b fixed it.",
        "Request id 123e4567-e89b-12d3-a456-426614174000 failed.",
        "I use scikit-learn and sk-learn-is-a-great-library-for-ml in Python 3.11.",
        "We paid 1,234,567.89 EUR; the budget is 4000 USD per month.",
        "My ZIP is 94107 and my apartment is 12B on floor 3.",
        "Use a bearer token in the Authorization header.",
        "Card ending in 1111 was charged 49.99.",
        "I run 16 GB RAM with an RTX 4090 on Ubuntu 24.04.",
        "DE is where I live, at Hauptstrasse 12, 10115 Berlin.",
    ],
)
def test_ordinary_text_survives(redactor: Redactor, text: str) -> None:
    result = redactor.redact(text)
    assert (result.text, result.kinds) == (text, ())


def test_thousands_of_real_conversation_turns_keep_every_word(redactor: Redactor) -> None:
    """LoCoMo's dialogues (people chatting about jobs, pets, trips, dates, numbers): no secret in them,
    so any redaction would be a false positive."""
    from proxy.bench.locomo.data import load_locomo

    path = SHARED / "data" / "locomo-dev.json"
    if not path.exists():
        pytest.skip(f"LoCoMo dev set not found at {path} (../shared/data beside the repo)")
    memories = [turn.memory_text() for conv in load_locomo(path).conversations for turn in conv.turns]
    assert len(memories) > 1000
    redacted = [text for text in memories if redactor.redact(text).kinds]
    assert redacted == []


def test_only_luhn_valid_cards_and_checksummed_ibans_are_redacted(redactor: Redactor) -> None:
    assert redactor.redact("4111 1111 1111 1112").kinds == ()  # one digit off: not a card
    assert redactor.redact("DE88 3704 0044 0532 0130 00").kinds == ()  # wrong check digits
    assert redactor.redact("000-12-3456").kinds == ()  # never issued as an SSN


def test_operator_patterns_and_switching_the_built_ins_off() -> None:
    extra = {"employee_id": r"\bEMP-\d{6}\b"}
    both = Redactor(extra=extra).redact(f"I am EMP-004211, card {VISA}")
    assert (both.text, both.kinds) == ("I am [redacted:employee_id], card [redacted:card]", ("card", "employee_id"))
    only = Redactor(enabled=False, extra=extra).redact(f"I am EMP-004211, card {VISA}")
    assert only.text == f"I am [redacted:employee_id], card {VISA}"


@pytest.mark.parametrize(
    ("patterns", "problem"),
    [
        ({"Bad Name": "x"}, "lowercase identifier"),
        ({"broken": "("}, "not a regex"),
        ({"everything": ".*"}, "empty string"),
    ],
)
def test_invalid_operator_patterns_are_refused_at_start(patterns: dict[str, str], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        Settings(redact_patterns=patterns)
