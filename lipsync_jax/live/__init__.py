"""Live lip-sync: avatars prepared once, sessions that turn streamed speech into lip-synced
frames, and one scheduler per device that batches every session's faces. Built on infer's
pieces; nothing outside this package imports it."""
