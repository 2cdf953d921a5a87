"""Writing output files so that a reader never sees a partial one."""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path


def atomic_write(path, data):
    """Write bytes to ``path`` through a temporary file in the same folder and a rename."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual mode
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def safe_stem(name):
    """A file-name stem for a layer name that cannot leave its folder.

    Path separators and unusual characters become ``_`` and leading dots are
    dropped, so the stem is never hidden, never ``..`` and never a path.
    """
    stem = re.sub(r"[^A-Za-z0-9_.#@+=-]", "_", str(name)).lstrip(".")
    return stem or "_"
