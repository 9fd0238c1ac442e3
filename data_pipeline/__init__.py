"""Corpus preprocessing (raw videos -> face crops + mels -> TFDS ArrayRecord shards).

Not implemented yet: tracked as the Data issue; this package holds it when it lands.
"""
