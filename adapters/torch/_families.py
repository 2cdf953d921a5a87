"""Which layers of a network to score by default, family by family.

A layerwise report of every leaf of a ResNet or a ViT is hundreds of rows of
convolutions, norms and activations inside blocks; what a researcher compares is
the output of each *block* — a residual block, a transformer block, a mixer or
ConvNeXt block, a decoder stage — and of the head. :func:`default_layers` finds
them from the structure, without knowing the library:

1. **Blocks by name**: modules whose class (or a base class) is a known block —
   torchvision's ``BasicBlock``/``Bottleneck``/``CNBlock``, timm's ``Block``,
   ``MixerBlock``, ``ConvNeXtBlock``, Hugging Face's ``ViTLayer``/``DeiTLayer`` …
   (:data:`BLOCK_CLASSES`), the outermost ones only.
2. **Repeated blocks**: otherwise, the children of every ``Sequential`` or
   ``ModuleList`` that holds two or more modules of one class with parameters of
   their own and submodules (``layer1.0``, ``blocks.3``, ``encoder.layer.5``).
3. **Decoder stages**: modules named like ``up1``, ``decoder.2``, ``dec3`` (an
   encoder–decoder's upsampling path), and the matching encoder stages
   (``down1``, ``enc2``), when no block was found.
4. **The head**: the last ``Linear`` or 1×1 convolution outside every block.

When none of these applies, every ``Conv*d`` and ``Linear`` module (the previous
default). Modules whose ``forward`` never runs (:func:`never_called`: a
``MultiheadAttention``'s ``out_proj``) are never proposed.
"""

from __future__ import annotations

import re

#: Class names of blocks in common libraries (torchvision, timm, Hugging Face).
BLOCK_CLASSES = (
    "BasicBlock",  # torchvision / timm ResNets
    "Bottleneck",
    "CNBlock",  # torchvision ConvNeXt
    "ConvNeXtBlock",  # timm ConvNeXt
    "Block",  # timm ViT / DeiT
    "ResPostBlock",
    "ParallelScalingBlock",
    "MixerBlock",  # timm MLP-Mixer
    "EncoderBlock",  # torchvision ViT
    "ViTLayer",  # Hugging Face ViT, DeiT
    "DeiTLayer",
    "TransformerEncoderLayer",  # torch.nn
)

_STAGE = re.compile(r"(^|\.)(up|dec|decoder|down|enc|encoder)[._]?\d+$")
_DECODER = re.compile(r"(^|\.)(up|dec|decoder)[._]?\d+$")


def _class_names(module):
    original = getattr(module, "original_name", None)  # TorchScript keeps only this
    if original:
        return {original}
    return {cls.__name__ for cls in type(module).__mro__}


def _has_parameters(module):
    return any(True for _ in module.parameters())


def _outermost(names):
    """Drop names nested inside another of ``names``."""
    kept = []
    for name in names:
        if not any(name.startswith(outer + ".") for outer in kept):
            kept.append(name)
    return kept


def _blocks_by_class(modules):
    return _outermost([n for n, m in modules if n and _class_names(m) & set(BLOCK_CLASSES)])


def _repeated_blocks(modules):
    import torch

    found = []
    for name, module in modules:
        if not isinstance(module, torch.nn.Sequential | torch.nn.ModuleList):
            continue
        children = list(module.named_children())
        kinds = {}
        for child_name, child in children:
            if any(True for _ in child.children()) and _has_parameters(child):
                kinds.setdefault(type(child).__name__, []).append(child_name)
        for names in kinds.values():
            if len(names) >= 2:
                found += [f"{name}.{c}" if name else c for c in names]
    return _outermost(found)


def _stages(modules):
    names = [n for n, _ in modules if n and _STAGE.search(n)]
    if not any(_DECODER.search(n) for n in names):
        return []
    return _outermost(names)


def never_called(modules):
    """Names of submodules whose ``forward`` is known never to run: the ``out_proj``
    of every ``torch.nn.MultiheadAttention``, whose weights the attention applies
    itself (``F.multi_head_attention_forward``) without calling the module.

    Parameters
    ----------
    modules : iterable of (str, torch.nn.Module)
        ``model.named_modules()``.

    Returns
    -------
    set of str
    """
    found = set()
    for name, module in modules:
        if "MultiheadAttention" in _class_names(module):
            found.add(f"{name}.out_proj" if name else "out_proj")
    return found


def _head(modules, blocks):
    head = None
    skipped = never_called(modules)
    for name, module in modules:
        if name in skipped or any(name == b or name.startswith(b + ".") for b in blocks):
            continue
        kinds = _class_names(module)  # names: TorchScript modules are no nn.Linear instances
        pointwise = "Conv2d" in kinds and tuple(getattr(module, "kernel_size", ())) == (1, 1)
        if "Linear" in kinds or pointwise:
            head = name
    return [head] if head else []


def default_layers(model):
    """The layers a layerwise report scores by default (module docstring).

    Parameters
    ----------
    model : torch.nn.Module

    Returns
    -------
    list of str
        Module names, in ``named_modules`` order: the blocks (or stages), then
        the head; or every ``Conv*d``/``Linear`` module when no block is found.

    Examples
    --------
    >>> import torch
    >>> from seis_sklearn.adapters.torch import default_layers
    >>> layer = lambda: torch.nn.TransformerEncoderLayer(16, 2, 32, batch_first=True)
    >>> net = torch.nn.Sequential(torch.nn.Sequential(layer(), layer()), torch.nn.Linear(16, 3))
    >>> default_layers(net)
    ['0.0', '0.1', '1']
    """
    modules = list(model.named_modules())
    blocks = _blocks_by_class(modules) or _repeated_blocks(modules) or _stages(modules)
    if not blocks:
        from . import DEFAULT_LAYER_TYPES, find_layers

        return find_layers(model, types=DEFAULT_LAYER_TYPES)
    return blocks + [h for h in _head(modules, blocks) if h not in blocks]


def prefix_tokens(model):
    """Class/register tokens before the patches of a vision transformer, or None.

    timm models say it (``num_prefix_tokens``); torchvision's ``VisionTransformer``
    has one class token (``class_token``); Hugging Face configs say it by
    ``model_type`` (ViT one class token, DeiT a class and a distillation token) and
    ``num_register_tokens`` (DINOv2 with registers).
    """
    count = getattr(model, "num_prefix_tokens", None)
    if isinstance(count, int) and not isinstance(count, bool):
        return count
    token = getattr(model, "class_token", None)
    if token is not None and hasattr(token, "shape") and len(token.shape) == 3:
        return int(token.shape[1])  # torchvision: (1, 1, hidden_dim)
    config = getattr(model, "config", None)
    kind = getattr(config, "model_type", None)
    base = {"vit": 1, "deit": 2, "dinov2": 1, "dinov2_with_registers": 1, "beit": 1}.get(kind)
    if base is None:
        return None
    registers = getattr(config, "num_register_tokens", 0)
    return base + (registers if isinstance(registers, int) else 0)
