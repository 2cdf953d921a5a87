"""Writing output files so that a reader never sees a partial one."""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from pathlib import Path


def atomic_write(path, data):
    """Write bytes to ``path`` through a temporary file in the same folder and a rename.

    Every step is checked — the write, the flush, ``fsync`` and the close — so a
    full disk is an ``OSError``, never a truncated file; ``path`` must be a regular
    file or not exist (a device node or a pipe is never replaced by a file).
    """
    path = Path(path)
    if path.exists() and not path.is_file():
        raise OSError(f"{path}: not a regular file; output goes only to regular files")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual mode
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def exit_on_bus_error(prefix, files):
    """While in the block, a bus error (a memory-mapped file truncated under a read)
    ends the process with one line on stderr naming ``files()`` and exit status 1.

    A Python signal handler cannot do it: the faulting load would run again after
    it returns. A handler installed with ``signal(2)`` through ctypes writes the
    line and calls ``_exit``. Elsewhere (no libc, no SIGBUS) nothing changes.
    """
    try:
        import ctypes
        import signal

        libc = ctypes.CDLL(None)
        handler_type = ctypes.CFUNCTYPE(None, ctypes.c_int)
        install = libc.signal
        install.restype = ctypes.c_void_p
        bus = signal.SIGBUS
    except (ImportError, OSError, AttributeError):  # pragma: no cover - not POSIX
        yield
        return

    fallback = f"{prefix}a memory-mapped input: truncated while being read (bus error)\n"

    def on_bus_error(_signum):  # pragma: no cover - runs in a process that then exits
        # Nothing here may raise: an exception in a ctypes callback is printed and
        # ignored, the faulting read runs again, faults again — forever.
        try:
            names = ", ".join(str(name) for name in files()) or "a memory-mapped input"
            message = f"{prefix}{names}: truncated while being read (bus error)\n"
        except BaseException:  # noqa: BLE001
            message = fallback
        try:
            os.write(2, message.encode(errors="replace"))
        finally:
            os._exit(1)

    handler = handler_type(on_bus_error)
    install.argtypes = [ctypes.c_int, handler_type]
    previous = install(bus, handler)
    try:
        yield
    finally:
        install.argtypes = [ctypes.c_int, ctypes.c_void_p]
        install(bus, previous)


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
