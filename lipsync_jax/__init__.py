"""lipsync_jax: Wav2Lip (speech-driven lip sync) in JAX/Flax."""
__version__ = '0.1.0'
