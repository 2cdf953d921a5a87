"""Recording submodule outputs of TorchScript models, which take no forward hooks.

A compiled module calls its children through ``prim::CallMethod[name="forward"]``
nodes of its ``forward`` graph. On a private copy of the model (saved and loaded
again, so the caller's model and its compilation unit are untouched) each call
of a watched child gets a ``prim::SetAttr`` right after it, storing the output
in an extra ``Optional`` attribute of the parent; after a forward pass the
recorder reads those attributes. Graphs are walked from the root in node order,
children before their parent, which gives the keys in the order forward hooks
would fire (calls inside loops keep their last
value; calls inside untaken branches record nothing for that pass).
"""

from __future__ import annotations

import contextlib
import io
import warnings


@contextlib.contextmanager
def torchscript_deprecations():
    """Silence torch's own deprecation of TorchScript while the block runs — only it.

    ``torch.jit.save``/``load``/``script`` warn that TorchScript is deprecated
    (``DeprecationWarning`` in torch 2.10–2.13, ``FutureWarning``, which Python shows
    by default, from 2.14 or on Python 3.14): a user with a ``.pt`` file cannot act on
    it at each load and copy. The filter matches those messages raised from
    ``torch.jit`` only; any other warning in the block is shown as usual.
    """
    with warnings.catch_warnings():
        for category in (DeprecationWarning, FutureWarning):
            warnings.filterwarnings(
                "ignore",
                message=r"`torch\.jit\.\w+` is (deprecated|not supported in Python)",
                category=category,
                module=r"torch\.jit(\.|$)",
            )
        yield


def script_copy(model, torch):
    """An independent copy of a ScriptModule (own compilation unit), on the CPU."""
    buffer = io.BytesIO()
    with torchscript_deprecations():  # torch >= 2.10 deprecates TorchScript; users have .pt files
        torch.jit.save(model, buffer)
        buffer.seek(0)
        return torch.jit.load(buffer, map_location="cpu")


def _nodes(block):
    for node in block.nodes():
        yield node
        for inner in node.blocks():
            yield from _nodes(inner)


def _child_calls(graph):
    """(attribute name, node) of every ``self.<attr>.forward(...)`` call, in node order."""
    me = next(iter(graph.inputs()))
    calls = []
    for node in _nodes(graph.block()):
        if node.kind() != "prim::CallMethod" or node.s("name") != "forward":
            continue
        target = next(iter(node.inputs())).node()
        if target.kind() == "prim::GetAttr" and next(iter(target.inputs())) == me:
            calls.append((target.s("name"), node))
    return calls


class ScriptRecorder:
    """Capture the outputs of named submodules of a copy of a ScriptModule.

    Attributes
    ----------
    model : torch.jit.ScriptModule
        The instrumented copy, to be run instead of the caller's model.
    """

    def __init__(self, model, names, select, torch):
        self.model = script_copy(model, torch)
        self.select = select
        modules = dict(self.model.named_modules())
        wanted = set(names)
        self.slots = []  # (layer name, parent module, attribute) in execution order
        installed = set()

        def type_key(module):
            return module._c._type().qualified_name()

        def walk(prefix, module):
            if not hasattr(module, "graph"):
                return
            counts = {}
            graph = module.graph
            for attr, node in _child_calls(graph):
                index = counts[attr] = counts.get(attr, -1) + 1
                child = f"{prefix}.{attr}" if prefix else attr
                slot = f"_seis_capture_{attr}_{index}"
                if child in modules:  # the child's own calls finish before its output
                    walk(child, modules[child])
                if child in wanted:
                    self.slots.append((child, module, slot))
                    if (type_key(module), slot) not in installed:
                        installed.add((type_key(module), slot))
                        self._install(graph, node, module, slot, modules, type_key, torch)

        walk("", self.model)
        missing = [n for n in names if n not in {s[0] for s in self.slots}]
        if missing:
            raise ValueError(
                f"layers: {', '.join(map(repr, missing))} is not called from its parent's "
                "compiled forward, so a TorchScript model cannot record it (pick modules "
                "the forward calls directly, e.g. with find_layers)"
            )

    @staticmethod
    def _install(graph, node, parent, slot, modules, type_key, torch):
        kind = torch._C.OptionalType(node.output().type())
        for module in modules.values():  # every instance of the parent's compiled type
            if type_key(module) == type_key(parent) and not module._c.hasattr(slot):
                module._c._register_attribute(slot, kind, None)
        store = graph.create("prim::SetAttr", [next(iter(graph.inputs())), node.output()], 0)
        store.s_("name", slot)
        store.insertAfter(node)

    def clear(self):
        for _, module, slot in self.slots:
            setattr(module, slot, None)

    def take(self):
        """Layer keys in execution order → selected tensors of the last forward pass."""
        counts = {}
        for name, _, _ in self.slots:
            counts[name] = counts.get(name, 0) + 1
        seen, out = {}, {}
        for name, module, slot in self.slots:
            value = getattr(module, slot)
            seen[name] = seen.get(name, 0) + 1
            if value is not None:
                out[name if counts[name] == 1 else f"{name}#{seen[name]}"] = self.select(value)
        self.clear()
        return out

    def remove(self):
        """Nothing to undo: only the private copy was changed."""
