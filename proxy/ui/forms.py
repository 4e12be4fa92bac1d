"""The explorer's form posts: URL-encoded, bounded in size and field count, read without a multipart parser."""

from __future__ import annotations

from urllib.parse import parse_qsl

from starlette.requests import Request

from proxy import jsonbody

from .access import UIError

MAX_FORM_FIELDS = 16


async def read_form(request: Request, max_bytes: int) -> dict[str, str]:
    """The posted fields (the last value of a repeated name); 415 for another encoding, 413 past ``max_bytes``."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/x-www-form-urlencoded":
        raise UIError(415, "Forms are posted as application/x-www-form-urlencoded.")
    try:
        raw = await jsonbody.read_capped(request, max_bytes)
    except jsonbody.Refused:
        raise UIError(413, f"The form is larger than {max_bytes} bytes.") from None
    try:
        pairs = parse_qsl(raw.decode("utf-8"), keep_blank_values=True, max_num_fields=MAX_FORM_FIELDS)
    except (UnicodeDecodeError, ValueError):
        raise UIError(400, "The form could not be read (not UTF-8, or too many fields).") from None
    return dict(pairs)
