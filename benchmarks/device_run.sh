#!/usr/bin/env bash
# On the GPU machine, from the repository root, with .whl/ carried (benchmarks/device_wheels.sh):
# installs the carried wheels, unpacks ffmpeg and ffprobe, and runs the device check into $OUT.
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 PATH="/tmp/bin:$PATH"
mkdir -p /tmp/bin
for tool in ffmpeg ffprobe; do
  python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' \
    ".whl/$tool.xz" "/tmp/bin/$tool" && chmod +x "/tmp/bin/$tool"
done
nvidia-smi --query-gpu=name,memory.total,clocks.sm,driver_version --format=csv || true
python3 benchmarks/device_check.py --out "${OUT:-device_out}" --media .whl/media "$@" 2>&1 |
  tee "${OUT:-device_out}/device_check.log"
