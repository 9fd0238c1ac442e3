"""ml_collections config files: `--config configs/<name>.py[:tiny]`, overridable as
`--config.<field>=<value>`."""
