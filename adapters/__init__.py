"""Adapters that pull activations out of deep-learning frameworks.

``seis_sklearn.adapters.torch`` — PyTorch modules (forward hooks; TorchScript
models too). ``seis_sklearn.adapters.onnx`` — any ONNX model, through
onnxruntime. Each adapter imports its framework only when it is imported itself.
"""
