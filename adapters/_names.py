"""Choosing layers by name or glob, and transforms by text spec: one rule for the Python
API and the command line (docs/torch.rst, "Choosing layers").

Layer names are paths: a torch module's name is dotted (``layer2.0.downsample.1``), an
ONNX tensor's is slashed (``/layer2/layer2.0/Conv_output_0``). A pattern matches a
whole name, part by part:

* a name that exists is taken as it is (whatever characters it holds);
* ``*`` matches any run of characters *within one part* — it never crosses the
  separator (``.`` for module names and saved layers, ``/`` for ONNX tensors);
  ``?`` one character of a part; ``[abc]``/``[!abc]`` one character of a set;
* ``**`` matches any run of characters, separators included (any depth).

So ``layer*.1`` is the second block of every stage (``layer1.1``, ``layer2.1``) and
not ``layer2.0.downsample.1``; ``layer1.*`` the blocks of ``layer1`` and not their
convolutions; ``layer1.**`` everything inside ``layer1``; ``**.conv1`` every
``conv1`` below the top level.
"""

from __future__ import annotations

import difflib
import fnmatch
import re
from functools import lru_cache

GLOB_CHARACTERS = "*?["


def is_glob(pattern):
    """Whether ``pattern`` holds a glob character (``*``, ``?``, ``[``)."""
    return any(c in pattern for c in GLOB_CHARACTERS)


@lru_cache(maxsize=256)
def glob_regex(pattern, separator="."):
    """The compiled regular expression of a layer glob (module docstring).

    Parameters
    ----------
    pattern : str
    separator : str, default="."
        The character that separates the parts of a name.

    Returns
    -------
    re.Pattern
        Matches whole names (``fullmatch``).

    Examples
    --------
    >>> from seis_sklearn.adapters._names import glob_regex
    >>> [bool(glob_regex("layer*.1").fullmatch(n)) for n in ("layer2.1", "layer2.0.downsample.1")]
    [True, False]
    >>> bool(glob_regex("layer2.**").fullmatch("layer2.0.downsample.1"))
    True
    """
    part = f"[^{re.escape(separator)}]"
    out, i, n = [], 0, len(pattern)
    while i < n:
        c = pattern[i]
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
            while i < n and pattern[i] == "*":
                i += 1
            continue
        if c == "*":
            out.append(f"{part}*")
        elif c == "?":
            out.append(part)
        elif c == "[":
            j = i + 1
            if j < n and pattern[j] == "!":
                j += 1
            if j < n and pattern[j] == "]":
                j += 1
            j = pattern.find("]", j)
            if j < 0:  # no closing bracket: a literal "["
                out.append(re.escape(c))
            else:
                body = pattern[i + 1 : j].replace("\\", "\\\\")
                if body.startswith("!"):
                    body = "^" + body[1:]
                elif body.startswith("^"):
                    body = "\\" + body
                out.append(f"(?!{re.escape(separator)})[{body}]")
                i = j
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out), re.DOTALL)


def match_names(names, patterns, *, argument="layers", what="module", where="the model",
                separator="."):  # fmt: skip
    """The names that ``patterns`` choose (module docstring: names or globs).

    Parameters
    ----------
    names : sequence of str
        Every name there is, in the model's order.
    patterns : str or sequence of str
        Names or globs.
    argument : str, default="layers"
        The argument (or command-line flag) the patterns came from, for errors.
    what, where : str
        What a name names (``"module"``, ``"tensor"``, ``"layer"``) and of what, for
        errors.
    separator : str, default="."
        What separates the parts of a name: ``*`` does not cross it, ``**`` does.

    Returns
    -------
    list of str
        Per pattern in the order given, its names in the model's order; a name chosen
        by two patterns comes once, where it was first chosen.

    Raises
    ------
    ValueError
        Naming ``argument``: no pattern, a pattern given twice, a name that is not
        there or a glob that matches nothing (with the names it is close to, and what
        ``**`` would match where ``*`` stopped at a separator).

    Examples
    --------
    >>> from seis_sklearn.adapters._names import match_names
    >>> names = ["layer1", "layer1.0", "layer1.0.conv1", "layer2", "layer2.0",
    ...          "layer2.0.downsample", "layer2.0.downsample.1", "layer2.1", "fc"]
    >>> match_names(names, ["layer*.1", "fc"])
    ['layer2.1', 'fc']
    >>> match_names(names, "layer1.*")
    ['layer1.0']
    """
    if isinstance(patterns, str):
        patterns = [patterns]
    patterns = list(patterns)
    if not patterns:
        raise ValueError(f"{argument} is empty: name at least one {what}")
    names = [n for n in names if n]
    known = set(names)
    chosen, seen = [], set()
    for pattern in patterns:
        if not isinstance(pattern, str):
            raise TypeError(
                f"{argument}: names and globs are strings; got {type(pattern).__name__} "
                f"{pattern!r}"
            )
        if pattern in seen:
            raise ValueError(f"{argument} names {pattern!r} twice")
        seen.add(pattern)
        if pattern in known:
            hits = [pattern]
        elif is_glob(pattern):
            regex = glob_regex(pattern, separator)
            hits = [n for n in names if regex.fullmatch(n)]
        else:
            hits = []
        if not hits:
            raise ValueError(_unmatched(names, pattern, argument, what, where, separator))
        chosen += hits
    return list(dict.fromkeys(chosen))


def _unmatched(names, pattern, argument, what, where, separator):
    close = difflib.get_close_matches(pattern, names, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
    if not is_glob(pattern):
        return f"{argument}: {where} has no {what} named {pattern!r}{hint}"
    crossing = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
    if crossing:
        deeper = pattern.replace("**", "*").replace("*", "**")
        hint = (
            f" ('*' stays within one {separator!r}-separated part of a name; {deeper!r} "
            f"would cross parts and match {len(crossing)}, e.g. {crossing[0]!r})"
        )
    return f"{argument} {pattern!r} matches no {what} of {where}{hint}"


def as_transforms(transforms, from_spec, argument="transforms"):
    """A report's transforms as a dict name → callable.

    ``transforms`` is a dict name → callable or text spec
    (:func:`seis_sklearn.transforms.parse_spec`: ``"rot90"``, ``"hflip"``,
    ``"rot90+shift:2"``), a list of specs (each its own name, as the command line's
    ``--transform``) or one spec; ``from_spec`` turns a spec into the callable
    (torch's or numpy's). A spec acts on the inputs as ``layout="auto"`` reads them
    (channels first for 4-D images); pass a callable for another layout.
    """
    if isinstance(transforms, str):
        transforms = [transforms]
    if isinstance(transforms, (list, tuple)):
        for spec in transforms:
            if not isinstance(spec, str):
                raise TypeError(
                    f"{argument}: a list holds transform specs (e.g. ['rot90', 'hflip']); "
                    f"got {type(spec).__name__} — pass a dict name → callable for functions"
                )
        if len(set(transforms)) != len(transforms):
            raise ValueError(f"{argument} names the same transform twice")
        transforms = {spec: spec for spec in transforms}
    if not isinstance(transforms, dict) or not transforms:
        raise TypeError(
            f"{argument} must be a non-empty dict of name → callable (or text spec), or a "
            "list of specs such as ['rot90', 'hflip']"
        )
    return {
        name: as_transform(value, from_spec, f"{argument}[{name!r}]")
        for name, value in transforms.items()
    }


def as_transform(transform, from_spec, argument="transform"):
    """One transform: a callable as it is, a text spec through ``from_spec`` (errors
    naming ``argument``), None as None."""
    if isinstance(transform, str):
        try:
            return from_spec(transform)
        except ValueError as exc:
            raise ValueError(f"{argument}: {exc}") from None
    return transform
