"""Names from the outside world (file names, recording ids, labels read from files) made safe to print.

A file name can hold a terminal escape sequence (``\\x1b[31m``), a newline or a carriage return that
rewrites what the user sees, and a name or label with ``[...]`` in it is Rich markup: printed as
is it could hide the real name, style the line, or stop the command with a ``MarkupError``.
"""

from __future__ import annotations

import re
import unicodedata

from rich.text import Text

# ``scheme://user:secret@`` (or ``scheme:/...``, as a path type folds it) anywhere in a text.
_URL_USERINFO = re.compile(r"(?P<scheme>\b[a-z][a-z0-9+.-]*:/{1,2})[^/@\s'\"]*@", re.IGNORECASE)


def without_credentials(text: str) -> str:
    """``text`` with the ``user:secret@`` of every URL in it masked as ``***@``: for any message that
    may quote a storage URL a user wrote a key into."""
    return _URL_USERINFO.sub(lambda m: f"{m['scheme']}***@", text)


def printable(value: object) -> str:
    """``value``'s text with every control or unpaired-surrogate character written as its escape
    (``\\x1b``, ``\\n``, ``\\udcff``), so one name stays one visible line."""
    out = []
    for ch in str(value):
        if unicodedata.category(ch) in ("Cc", "Cs"):
            out.append(ch.encode("unicode_escape", "backslashreplace").decode("ascii"))
        else:
            out.append(ch)
    return "".join(out)


def plain(value: object) -> Text:
    """A Rich table cell or line part shown exactly as ``printable`` writes it: never read as markup."""
    return Text(printable(value))
