"""Corpus tools: `synthetic` writes a synthetic talking-face corpus (LRS2 layout).

Preprocessing into TFDS ArrayRecord shards and the grain loaders are not written yet.
"""
