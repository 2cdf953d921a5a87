"""Adapters that pull activations out of deep-learning frameworks.

``seis_sklearn.adapters.torch`` — PyTorch modules, through forward hooks. Each
adapter imports its framework only when it is imported itself.
"""
