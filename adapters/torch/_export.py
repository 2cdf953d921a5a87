"""Programs saved by ``torch.export.save`` (``.pt2``), read as modules with named layers.

``torch.export`` replaces TorchScript (deprecated in torch 2.14). A saved program is
one flat graph; :func:`torch.export.unflatten` gives back the module hierarchy of the
model it was exported from — the same names (``layer1.0``, ``features.3``) — as
interpreter modules that take forward hooks, but whose class is
``InterpreterModule`` whatever the original was. The original classes are in the
graph's ``nn_module_stack`` metadata; each module gets its original class name as
``original_name`` (as TorchScript keeps it), so that :func:`default_layers` and
:func:`find_layers` see ``BasicBlock``, ``Conv2d``, ``Linear`` again.
"""

from __future__ import annotations

import contextlib
import logging


def original_classes(program):
    """Module name → original class name, from the graph's ``nn_module_stack``."""
    classes = {}
    for node in program.graph.nodes:
        for value in (node.meta.get("nn_module_stack") or {}).values():
            name, kind = value[0], value[1]
            kind = kind if isinstance(kind, str) else getattr(kind, "__name__", str(kind))
            classes.setdefault(name, kind.rsplit(".", 1)[-1])
    return classes


def static_batch(program):
    """The fixed batch size of the program's first input, or None when it is dynamic."""
    inputs = set(program.graph_signature.user_inputs)
    for node in program.graph.nodes:
        if node.op == "placeholder" and node.name in inputs:
            value = node.meta.get("val")
            shape = getattr(value, "shape", None)
            if shape is not None and len(shape) and isinstance(shape[0], int):
                return int(shape[0])
            return None
    return None


class _Kept(logging.Handler):
    """A logging handler that keeps the records instead of printing them."""

    def __init__(self):
        super().__init__()
        self.records = []

    def emit(self, record):
        self.records.append(record)


@contextlib.contextmanager
def kept_logs(name):
    """The records of the logger ``name`` and its children while the block runs, kept
    (yielded as a list) instead of printed.

    ``torch.export.load`` logs a warning with the whole traceback of a file it cannot
    read (a text file, an ``.npy``, a zip of something else) before it raises; the
    caller says it in one line. Every logger of the family that has handlers gets the
    keeping handler instead for the block (children without handlers reach it through
    ``name``'s), and its own back afterwards.
    """
    kept = _Kept()
    family = [name] + [
        n for n in list(logging.root.manager.loggerDict) if n.startswith(name + ".")
    ]
    loggers = [logging.getLogger(n) for n in family]
    loggers = [loggers[0]] + [logger for logger in loggers[1:] if logger.handlers]
    saved = [(logger.handlers, logger.propagate) for logger in loggers]
    try:
        for logger in loggers:
            logger.handlers, logger.propagate = [kept], False
        yield kept.records
    finally:
        for logger, (handlers, propagate) in zip(loggers, saved, strict=True):
            logger.handlers, logger.propagate = handlers, propagate


def _logged_cause(records):
    """The first line of the last exception logged in ``records`` (None if none)."""
    import re

    for record in reversed(records):
        if record.exc_info and record.exc_info[1] is not None:
            text = str(record.exc_info[1]).strip().splitlines()
            if text:  # less c10's "[enforce fail at file.cc:180] . "
                return re.sub(r"^\[enforce fail at [^\]]*\]\s*\.?\s*", "", text[0])
    return None


def load_exported(path, torch):
    """A saved ``torch.export`` program as a module with its original layer names.

    Parameters
    ----------
    path : str or path-like
        A file written by :func:`torch.export.save`.
    torch : module

    Returns
    -------
    program : torch.export.ExportedProgram
    module : torch.nn.Module
        :func:`torch.export.unflatten` of it; every submodule has ``original_name``.
    """
    with kept_logs("torch.export") as logged:  # a bad file: one error, no logged traceback
        try:
            program = torch.export.load(path)
        except Exception as exc:
            cause = _logged_cause(logged)  # what "check the warnings above" refers to
            if cause and "warnings above" in str(exc):
                raise RuntimeError(cause) from exc
            raise
    module = torch.export.unflatten(program)
    classes = original_classes(program)
    for name, submodule in module.named_modules():
        kind = classes.get(name)
        if kind is not None:
            object.__setattr__(submodule, "original_name", kind)
    return program, module
