"""Writing the stack's files so a reader (a restarted proxy, `status`, the console) sees the old file
or the new one, never half of one."""

from __future__ import annotations

import os
from pathlib import Path


def atomic_write(path: Path, text: str, mode: int = 0o666) -> None:
    """Write `text` to a temporary sibling, then rename it over `path` (atomic on POSIX). `mode` is
    the new file's permission before the umask: 0o600 keeps a credential to its user."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)
    tmp.replace(path)
