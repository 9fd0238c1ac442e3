"""Corpus tools: `synthetic` (a synthetic LRS2-layout corpus), `preprocess` (videos -> TFDS
ArrayRecord clip records), `records` (the record format) and `loaders` (grain batches)."""
