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
    program = torch.export.load(path)
    module = torch.export.unflatten(program)
    classes = original_classes(program)
    for name, submodule in module.named_modules():
        kind = classes.get(name)
        if kind is not None:
            object.__setattr__(submodule, "original_name", kind)
    return program, module
