"""`lipsync-jax COMMAND [FLAGS]`: one console script for every command-line tool.

    lipsync-jax infer --checkpoint_path wav2lip_gan.pth --face in.mp4 --audio speech.wav
    lipsync-jax faces interview.mp4            # which faces, for --face_select / --speakers
    lipsync-jax train --config configs/expert.py:tiny --workdir runs/expert ...
    lipsync-jax avatar prepare --face me.mp4 --out avatars/me
    lipsync-jax serve --checkpoint wav2lip_gan.pth --avatars avatars
    lipsync-jax demo | convert | evaluate | summary ... ; lipsync-jax COMMAND --help

Each command runs exactly as `python -m MODULE` of its module.
"""
import runpy
import sys
from typing import List, Optional

from lipsync_jax import allocator

COMMANDS = {  # name: (module, what it does)
    'infer': ('lipsync_jax.infer', 'lip-sync a video or image to speech'),
    'train': ('lipsync_jax.train',
              'train the expert or a generator (absl flags: --config, --workdir)'),
    'convert': ('lipsync_jax.convert',
                'convert an official .pth checkpoint to an orbax checkpoint'),
    'faces': ('lipsync_jax.list_faces',
              'list the faces of a video: track ids for infer --face_select and --speakers'),
    'evaluate': ('lipsync_jax.evaluate',
                 'LSE-D / LSE-C and AV offsets of videos (SyncNet, as the papers)'),
    'avatar': ('lipsync_jax.live.avatar', 'prepare an avatar for live lip-sync'),
    'serve': ('lipsync_jax.live.server', 'serve live lip-sync (WebRTC, WebSocket, a page)'),
    'demo': ('lipsync_jax.demo', 'the whole pipeline on a synthetic corpus, offline'),
    'summary': ('lipsync_jax.summary', 'layers, parameters and FLOPs of each network'),
}


def usage() -> str:
  lines = [__doc__.split('\n\n')[0], '', 'commands:']
  lines += [f'  {name:9} {text}' for name, (_, text) in COMMANDS.items()]
  return '\n'.join(lines)


def main(argv: Optional[List[str]] = None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  if not argv or argv[0] in ('-h', '--help'):
    print(usage())
    return 0 if argv else 2
  command, rest = argv[0], argv[1:]
  if command not in COMMANDS:
    print(f'lipsync-jax: unknown command {command!r}\n\n{usage()}', file=sys.stderr)
    return 2
  allocator.use_tcmalloc()  # re-executes this very command line once (the commands do too)
  sys.argv = [f'lipsync-jax {command}', *rest]
  try:
    runpy.run_module(COMMANDS[command][0], run_name='__main__', alter_sys=True)
  except SystemExit as e:
    return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
  return 0


if __name__ == '__main__':
  sys.exit(main())
