"""Safe loading of saved activations, and the saved-pairs folder format.

Activations saved as ``.npy`` or ``.npz`` files are read without ever
unpickling: an array of Python objects is refused, a file that is not what its
name says or that was cut short is one clear :class:`ArrayFileError`, and large
arrays come back as read-only memory maps (also the members of an uncompressed
``.npz``), so nothing is read before it is used.

A **saved-pairs folder** holds one layer's activations on the original and on
the transformed inputs per layer, in either form (both may be mixed):

* ``<layer>.npz`` with the arrays ``original`` and ``transformed``
  (:func:`save_pairs` writes this form);
* ``<layer>.original.npy`` and ``<layer>.transformed.npy`` (what
  :func:`seis_sklearn.adapters.torch.extract_activations` writes with ``out=``
  and ``transform=``).

An optional ``pairs.json`` manifest gives the layers' order (their depth) and
module types, and the name of the transform; without it the layers are taken in
natural order of their names (``layer2`` before ``layer10``).
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import struct
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ._files import atomic_write, safe_stem
from ._matricize import LAYOUTS
from ._validation import first_line

__all__ = [
    "ArrayFileError",
    "LayerPair",
    "MANIFEST",
    "list_pairs",
    "load_array",
    "load_pairs",
    "save_pairs",
    "write_manifest",
]

MANIFEST = "pairs.json"
FORMAT = "seis-pairs"
FORMAT_VERSION = 1
VIEWS = ("original", "transformed")


class ArrayFileError(ValueError):
    """A saved array or pairs folder that cannot be read safely (one-line message)."""


def _fail(path, problem):
    raise ArrayFileError(f"{path}: {problem}")


def _read_header(fp, path):
    """Read a .npy header from ``fp``; return (shape, fortran_order, dtype).

    Every malformed header is one :class:`ArrayFileError`: a bad magic string, an
    unsupported version, a header dict that does not parse (unterminated, a length
    field that lies, an expression such as ``10**30`` instead of a literal), keys
    other than numpy's three, a shape that is not a tuple of whole numbers ≥ 0.
    """
    try:
        version = np.lib.format.read_magic(fp)
    except ValueError:
        _fail(path, "not a .npy array (the file does not start with the .npy magic string)")
    if version not in ((1, 0), (2, 0), (3, 0)):
        _fail(path, f"unsupported .npy format version {version[0]}.{version[1]}")
    try:
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(fp)
        else:  # 3.0 differs from 2.0 only by an utf-8 header, which numeric dtypes never need
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(fp)
    except Exception as exc:  # noqa: BLE001 - a header is data: any failure is a bad file
        _fail(path, f"corrupt .npy header ({first_line(exc)})")
    if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape):
        _fail(path, f"corrupt .npy header (shape {shape!r} is not a tuple of whole numbers >= 0)")
    if dtype.hasobject:
        _fail(
            path,
            f"holds Python objects (dtype {dtype}); loading it would unpickle arbitrary "
            "code, so it is refused — save numeric arrays",
        )
    return shape, fortran, dtype


def _nbytes(shape, dtype):
    """Bytes of an array of ``shape`` (Python integers: no int64 overflow)."""
    return math.prod(shape) * dtype.itemsize


def load_array(path, key=None, *, mmap=True):
    """Load one array from a ``.npy`` or ``.npz`` file without unpickling anything.

    Parameters
    ----------
    path : str or path-like
        A ``.npy`` file, or a ``.npz`` archive.
    key : str, optional
        The array's name inside a ``.npz`` (may be left out when the archive
        holds exactly one array). Not allowed for ``.npy``.
    mmap : bool, default=True
        Return a read-only memory map when the data can be mapped (a ``.npy``
        file, or an uncompressed member of a ``.npz``); compressed members are
        read into memory.

    Returns
    -------
    ndarray or numpy.memmap

    Raises
    ------
    ArrayFileError
        The file is missing, not a ``.npy``/``.npz``, truncated or corrupt,
        holds an object array, or ``key`` names no array in it — one line that
        names the file and the problem.

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> from seis_sklearn.io import load_array
    >>> folder = tempfile.mkdtemp()
    >>> np.savez(os.path.join(folder, "acts.npz"), conv1=np.ones((4, 3)), conv2=np.zeros(2))
    >>> load_array(os.path.join(folder, "acts.npz"), "conv1").shape
    (4, 3)
    >>> load_array(os.path.join(folder, "acts.npz"), "conv3")
    Traceback (most recent call last):
    ...
    seis_sklearn.io.ArrayFileError: ...acts.npz: holds no array named 'conv3' (it holds ...)
    """
    path = Path(path)
    if not path.exists():
        _fail(path, "no such file")
    if not path.is_file():
        _fail(path, "not a file")
    with open(path, "rb") as fp:
        magic = fp.read(6)
    if magic[:4] == b"PK\x03\x04" or path.suffix == ".npz":
        return _load_npz_member(path, key, mmap)
    if key is not None:
        _fail(path, f"a .npy file holds one array; it has no array named {key!r}")
    return _load_npy(path, mmap)


def _load_npy(path, mmap):
    size = path.stat().st_size
    with open(path, "rb") as fp:
        shape, fortran, dtype = _read_header(fp, path)
        offset = fp.tell()
        need = _nbytes(shape, dtype)
        if size - offset < need:
            _fail(
                path,
                f"truncated: its header promises {need} bytes of {dtype} data "
                f"{shape}, the file holds {size - offset}",
            )
        if not mmap or need == 0:
            data = np.fromfile(fp, dtype=dtype, count=math.prod(shape))
            return data.reshape(shape, order="F" if fortran else "C")
    return np.memmap(
        path, dtype=dtype, mode="r", offset=offset, shape=shape, order="F" if fortran else "C"
    )


def _open_zip(path):
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        _fail(
            path, f"not a readable .npz (zip) archive — truncated or corrupt ({first_line(exc)})"
        )


def npz_keys(path):
    """Names of the arrays in a ``.npz`` archive, in archive order."""
    with _open_zip(Path(path)) as zf:
        return [n[: -len(".npy")] for n in zf.namelist() if n.endswith(".npy")]


def _member(zf, path, key):
    """The zip entry of the array ``key`` (or of the only array), and its name."""
    members = {n[: -len(".npy")]: n for n in zf.namelist() if n.endswith(".npy")}
    if not members:
        _fail(path, "holds no .npy arrays (not an .npz archive of arrays)")
    if key is None:
        if len(members) != 1:
            _fail(
                path,
                f"holds {len(members)} arrays ({_quoted(members)}); name one "
                f"(e.g. {path.name}:{next(iter(members))})",
            )
        key = next(iter(members))
    if key not in members:
        _fail(path, f"holds no array named {key!r} (it holds {_quoted(members)})")
    info = zf.getinfo(members[key])
    if info.compress_type in UNBOUNDED_COMPRESSION:
        # zipfile inflates bzip2 and lzma members with no bound on the output of one
        # read: a 38 KB member made 4 GiB while the 10-byte magic was read
        _fail(
            f"{path}:{key}",
            f"compressed with {UNBOUNDED_COMPRESSION[info.compress_type]}, which cannot be "
            "inflated with a bound on its size; numpy writes stored (np.savez) or deflated "
            "(np.savez_compressed) members: re-save it with one of those",
        )
    return info, key


# zip methods zipfile inflates without a bound on one read's output (deflate has one)
UNBOUNDED_COMPRESSION = {zipfile.ZIP_BZIP2: "bzip2", zipfile.ZIP_LZMA: "lzma"}


def array_header(path, key=None):
    """The shape and dtype of a saved array, from its header alone (nothing inflated).

    Parameters
    ----------
    path : str or path-like
        A ``.npy`` file or a ``.npz`` archive.
    key : str, optional
        The array's name in a ``.npz``.

    Returns
    -------
    (tuple of int, numpy.dtype)

    Raises
    ------
    ArrayFileError
        As :func:`load_array`.
    """
    path = Path(path)
    if not path.is_file():
        _fail(path, "no such file" if not path.exists() else "not a file")
    with open(path, "rb") as fp:
        if fp.read(4) != b"PK\x03\x04" and path.suffix != ".npz":
            fp.seek(0)
            shape, _, dtype = _read_header(fp, path)
            return shape, dtype
    with _open_zip(path) as zf:
        info, key = _member(zf, path, key)
        try:
            with zf.open(info) as fp:
                shape, _, dtype = _read_header(fp, f"{path}:{key}")
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError) as exc:
            _fail(f"{path}:{key}", f"corrupt archive member ({first_line(exc)})")
    return shape, dtype


def _load_npz_member(path, key, mmap):
    with _open_zip(path) as zf:
        info, key = _member(zf, path, key)
        where = f"{path}:{key}"
        try:
            with zf.open(info) as fp:
                shape, fortran, dtype = _read_header(fp, where)
                header_length = fp.tell()
                need = _nbytes(shape, dtype)
                # the archive's directory and the array's header must tell one story
                # before anything is inflated (a lying directory, a bomb's promise)
                if info.file_size != header_length + need:
                    _fail(
                        where,
                        f"corrupt or forged: the archive says the member holds "
                        f"{info.file_size} bytes, its array header promises "
                        f"{header_length + need} ({dtype} {shape})",
                    )
                if not (mmap and info.compress_type == zipfile.ZIP_STORED and need > 0):
                    _check_inflatable(where, need, info)
                    data = _inflate(fp, need, where)
                    return data.view(dtype).reshape(shape, order="F" if fortran else "C")
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError) as exc:
            _fail(where, f"corrupt archive member ({first_line(exc)})")
        start = _member_data_offset(path, info) + header_length
    if path.stat().st_size < start + need:
        _fail(where, "truncated: the archive ends inside the array")
    return np.memmap(
        path, dtype=dtype, mode="r", offset=start, shape=shape, order="F" if fortran else "C"
    )


# Compressed members are inflated in pieces of this many bytes, into the array itself.
INFLATE_STEP = 1 << 24


def _memory_limit():
    """Bytes this process may still allocate: its address-space limit, and physical memory."""
    import resource

    limits = []
    try:
        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        if soft != resource.RLIM_INFINITY:
            with open("/proc/self/statm") as fh:
                used = int(fh.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
            limits.append(soft - used)
    except (OSError, ValueError, AttributeError):  # pragma: no cover - not Linux
        pass
    try:
        limits.append(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not POSIX
        pass
    return min(limits) if limits else None


def _check_inflatable(where, need, info):
    """Refuse, before inflating, a member larger than the memory this process can have."""
    limit = _memory_limit()
    if limit is not None and need > limit:
        kind = "compressed" if info.compress_type != zipfile.ZIP_STORED else "read"
        _fail(
            where,
            f"its header promises {need / 2**30:.2f} GiB, to be held in memory ({kind} "
            f"members cannot be memory-mapped), more than this process may allocate "
            f"({max(limit, 0) / 2**30:.2f} GiB): store it uncompressed (np.savez)",
        )


def _inflate(fp, need, where):
    """Read exactly ``need`` bytes of a member into a new buffer, piece by piece."""
    data = np.empty(need, dtype=np.uint8)
    view = memoryview(data)
    done = 0
    while done < need:
        got = fp.readinto(view[done : done + INFLATE_STEP])
        if not got:
            _fail(where, "truncated: the archive ends inside the array")
        done += got
    if fp.read(1):
        _fail(where, "corrupt: the member inflates to more than its header promises")
    return data


def _member_data_offset(path, info):
    """Byte offset of a stored zip member's data (after its local file header)."""
    with open(path, "rb") as fp:
        fp.seek(info.header_offset)
        local = fp.read(30)
    if len(local) != 30 or local[:4] != b"PK\x03\x04":
        _fail(path, "corrupt .npz: a local file header is damaged")
    name_length, extra_length = struct.unpack("<HH", local[26:30])
    return info.header_offset + 30 + name_length + extra_length


def _quoted(names):
    return ", ".join(repr(n) for n in names)


# --------------------------------------------------------------------- pairs folders


@dataclass(frozen=True)
class LayerPair:
    """One layer of a saved-pairs folder (the arrays are read by :meth:`load`).

    Attributes
    ----------
    name : str
        The layer's name.
    depth : int
        Its position in the folder's order (execution order when the manifest
        gives it).
    module : str
        The module's type, when the manifest records it, else ``""``.
    files : tuple of pathlib.Path
        ``(<layer>.npz,)`` or ``(<layer>.original.npy, <layer>.transformed.npy)``.
    layout : str
        The layout the manifest records for the layer (``extract_activations`` writes
        the one it was given or recognised), else ``"auto"``.
    """

    name: str
    depth: int
    module: str
    files: tuple
    layout: str = "auto"

    def load(self, *, mmap=True):
        """Return ``(original, transformed)`` (memory maps where possible)."""
        if len(self.files) == 1:
            return tuple(load_array(self.files[0], view, mmap=mmap) for view in VIEWS)
        return tuple(load_array(f, mmap=mmap) for f in self.files)


def _natural_key(name):
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def list_pairs(folder):
    """The layers of a saved-pairs folder, in order, without reading any array.

    Parameters
    ----------
    folder : str or path-like

    Returns
    -------
    (list of LayerPair, dict)
        The layers, and the manifest (``{}`` when the folder has none).

    Raises
    ------
    ArrayFileError
        The folder is missing or empty, a layer lacks one of its two views, or
        the manifest is unreadable or names a file that is not there.
    """
    folder = Path(folder)
    if not folder.is_dir():
        _fail(folder, "no such folder" if not folder.exists() else "not a folder")
    found = {}
    inside = folder.resolve()
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.is_file():
            continue
        if path.is_symlink() and inside not in path.resolve().parents:
            _fail(
                folder,
                f"{path.name} is a symbolic link to {path.resolve()}, outside the folder: "
                "links are followed only inside a pairs folder (copy the file in)",
            )
        if path.suffix == ".npz":
            found.setdefault(path.stem, {})["npz"] = path
        elif path.suffix == ".npy":
            stem, _, view = path.stem.rpartition(".")
            if view in VIEWS and stem:
                found.setdefault(stem, {})[view] = path
    manifest = _read_manifest(folder)
    entries = {}
    for stem, files in found.items():
        if "npz" in files:
            if "original" in files or "transformed" in files:
                _fail(folder, f"layer {stem!r} is saved twice (as .npz and as .npy files)")
            entries[stem] = (files["npz"],)
        elif set(files) == set(VIEWS):
            entries[stem] = (files["original"], files["transformed"])
        else:
            have = next(iter(files))
            missing = "transformed" if have == "original" else "original"
            _fail(folder, f"layer {stem!r} has {stem}.{have}.npy but no {stem}.{missing}.npy")
    if manifest:
        layers = []
        for depth, layer in enumerate(manifest["layers"]):
            stem = layer.get("file", safe_stem(layer["name"]))
            if stem not in entries:
                _fail(
                    folder, f"{MANIFEST} lists layer {layer['name']!r} but its files are missing"
                )
            layers.append(
                LayerPair(
                    layer["name"], depth, layer.get("module", ""), entries[stem],
                    layer.get("layout", "auto"),
                )
            )  # fmt: skip
        return layers, manifest
    if not entries:
        _fail(
            folder,
            "holds no saved pairs (expected <layer>.npz with 'original' and 'transformed', "
            "or <layer>.original.npy and <layer>.transformed.npy)",
        )
    names = sorted(entries, key=_natural_key)
    return [LayerPair(n, d, "", entries[n]) for d, n in enumerate(names)], {}


def _read_manifest(folder):
    path = folder / MANIFEST
    if not path.exists():
        return {}
    try:
        manifest = json.loads(path.read_text())
    except (ValueError, OSError) as exc:
        _fail(path, f"unreadable manifest ({first_line(exc)})")
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        _fail(path, f"not a {FORMAT} manifest")
    version = manifest.get("version", 0)
    if not isinstance(version, int) or isinstance(version, bool):
        _fail(path, f"'version' must be a whole number; got {_kind(version)}")
    if version > FORMAT_VERSION:
        _fail(path, f"written by a newer seis-sklearn (format version {version})")
    if not isinstance(manifest.get("transform"), str | None):
        _fail(path, f"'transform' must be a string; got {_kind(manifest['transform'])}")
    layers = manifest.get("layers")
    if not isinstance(layers, list):
        _fail(path, f"'layers' must be a list of layers; got {_kind(layers)}")
    if not layers:
        _fail(path, "'layers' is empty: the manifest lists no layer to score")
    for i, layer in enumerate(layers):
        if not isinstance(layer, dict):
            _fail(path, f"layers[{i}] must be an object with 'name'; got {_kind(layer)}")
        for key, required in (("name", True), ("file", False), ("module", False)):
            if (required or key in layer) and not isinstance(layer.get(key), str):
                _fail(path, f"layers[{i}].{key} must be a string; got {_kind(layer.get(key))}")
        if "layout" in layer and layer["layout"] not in LAYOUTS:
            _fail(path, f"layers[{i}].layout must be one of {', '.join(LAYOUTS)}; "
                        f"got {layer['layout']!r}")  # fmt: skip
    return manifest


def _kind(value):
    """A JSON value's type in words, for messages."""
    names = {list: "a list", dict: "an object", str: "a string", bool: "true/false"}
    if value is None:
        return "nothing (null)"
    return names.get(type(value), f"a number ({value!r})" if isinstance(value, int | float)
                     else type(value).__name__)  # fmt: skip


def load_pairs(folder, *, mmap=True):
    """Read a saved-pairs folder: layer name → ``(original, transformed)``.

    Parameters
    ----------
    folder : str or path-like
    mmap : bool, default=True
        Memory-map the arrays where possible (see :func:`load_array`).

    Returns
    -------
    dict
        In the folder's layer order.

    Examples
    --------
    >>> import numpy as np, tempfile
    >>> from seis_sklearn.io import load_pairs, save_pairs
    >>> A = np.arange(24.0).reshape(4, 2, 3)
    >>> folder = save_pairs(tempfile.mkdtemp(), {"conv1": (A, A[..., ::-1])},
    ...                     transform="hflip")
    >>> pairs = load_pairs(folder)
    >>> list(pairs), np.array_equal(pairs["conv1"][1], A[..., ::-1])
    (['conv1'], True)
    """
    layers, _ = list_pairs(folder)
    return {layer.name: layer.load(mmap=mmap) for layer in layers}


def save_pairs(folder, pairs, *, transform=None, modules=None):
    """Write layers' (original, transformed) activations as a saved-pairs folder.

    One uncompressed ``<layer>.npz`` per layer (memory-mappable when read back),
    each written atomically, then the ``pairs.json`` manifest with the layer
    order.

    Parameters
    ----------
    folder : str or path-like
        Created if needed. Existing files of the same layers are replaced.
    pairs : dict of str → (array-like, array-like)
        Layer name → activations on the original and the transformed inputs,
        in depth order.
    transform : str, optional
        Name of the transform, recorded in the manifest (and used by
        ``seis report`` as the report's transform name).
    modules : dict of str → str, optional
        Layer name → module type, recorded in the manifest.

    Returns
    -------
    pathlib.Path
        The folder.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if not isinstance(pairs, dict) or not pairs:
        raise TypeError("pairs must be a non-empty dict of layer name → (original, transformed)")
    stems = [safe_stem(name) for name in pairs]
    if len(set(stems)) != len(stems):
        raise ValueError("pairs: two layer names map to the same file name")
    layers = []
    for (name, pair), stem in zip(pairs.items(), stems, strict=True):
        if not isinstance(pair, tuple | list) or len(pair) != 2:
            raise TypeError(f"pairs[{name!r}] must be a pair (original, transformed)")
        buffer = io.BytesIO()
        np.savez(buffer, **{view: np.asarray(a) for view, a in zip(VIEWS, pair, strict=True)})
        atomic_write(folder / f"{stem}.npz", buffer.getvalue())
        layers.append({"name": str(name), "file": stem, "module": (modules or {}).get(name, "")})
    write_manifest(folder, layers, transform=transform)
    return folder


def write_manifest(folder, layers, *, transform=None):
    """Write (atomically) the ``pairs.json`` manifest of a saved-pairs folder.

    Parameters
    ----------
    folder : path-like
    layers : list of dict
        In depth order, each with ``name``, ``file`` (the file stem) and
        ``module``, and optionally ``layout``.
    transform : str, optional
    """
    manifest = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "transform": transform,
        "layers": layers,
    }
    atomic_write(Path(folder) / MANIFEST, (json.dumps(manifest, indent=1) + "\n").encode())


def file_identity(path):
    """(size, mtime_ns) of a file: what a resumed run checks is unchanged."""
    stat = os.stat(path)
    return [stat.st_size, stat.st_mtime_ns]
