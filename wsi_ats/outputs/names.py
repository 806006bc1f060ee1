"""A slide id as a folder name and as text to show: an id is a name, never a path.

`folder_name` keeps an id that is a safe folder name on every common file system and
maps any other (``..``, ``a/b``, control characters, a leading dot, ``CON``,
``predictions.csv``, 300 characters, ...) to a cleaned name plus a hash of the id, so no
id can place a file outside ``OUT`` or onto another slide's or OUT's own files; the CSV
keeps the id itself. `printable` shows any id (or message naming one) on a terminal or
in a figure without control characters acting.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata

#: Names of OUT's own files, compared case-insensitively: a slide folder never takes one.
OUT_FILES = ("predictions.csv", "summary.json", "report.html")
#: Longest id kept as its folder name, in UTF-8 bytes (file systems allow 255; eCryptfs 143).
MAX_FOLDER_BYTES = 100
#: Characters no folder name holds: path separators and what Windows file systems refuse.
_FORBIDDEN = frozenset('/\\:*?"<>|')
_WINDOWS_DEVICES = frozenset({"con", "prn", "aux", "nul", "conin$", "conout$", *(f"{d}{i}" for d in ("com", "lpt") for i in range(10))})
#: The tail `folder_name` gives a mapped id; an id that already ends like this is mapped too, so names never meet.
_HASH_TAIL = re.compile(r"~[0-9a-f]{16}$")


def folder_name(slide_id: str) -> str:
    """The name of the slide's folder in OUT: the id itself when it is a safe name, else ``<cleaned>~<16 hex>``.

    Deterministic and one-to-one: the hash is of the whole id (SHA-256), and kept names
    never end like a mapped one. The CSV keeps the id itself; ``attention.json`` in the
    folder names it too.
    """
    if _is_safe_name(slide_id):
        return slide_id
    cleaned = "".join("_" if _bad_char(ch) else ch for ch in slide_id)
    cleaned = cleaned.encode("utf-8", "surrogateescape")[:MAX_FOLDER_BYTES].decode("utf-8", "ignore")
    if not cleaned or cleaned.startswith("."):
        cleaned = "_" + cleaned[1:]  # "" -> "_"
    if cleaned.endswith((".", " ")):
        cleaned = cleaned[:-1] + "_"
    digest = hashlib.sha256(slide_id.encode("utf-8", "surrogateescape")).hexdigest()[:16]
    return f"{cleaned}~{digest}"


def printable(text: str) -> str:
    """``text`` safe to show on a terminal or in a figure: control characters and undecodable bytes as escapes."""
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text)


def _bad_char(ch: str) -> bool:
    """A separator, a character Windows refuses, or any control, format, surrogate, private or unassigned one."""
    return ch in _FORBIDDEN or unicodedata.category(ch).startswith("C")


def _is_safe_name(name: str) -> bool:
    """Usable as it is: printable, not hidden (OUT's own state starts with a dot), not a device or OUT file, not too long."""
    return (
        bool(name)
        and not any(_bad_char(ch) for ch in name)
        and not name.startswith(".")
        and not name.endswith((".", " "))
        and len(name.encode("utf-8")) <= MAX_FOLDER_BYTES
        and name.split(".")[0].rstrip(" ").casefold() not in _WINDOWS_DEVICES
        and name.casefold() not in OUT_FILES
        and _HASH_TAIL.search(name) is None
    )
