"""lipsync_jax.allocator: entry points re-run themselves under tcmalloc where the system has it."""
import os
import subprocess
import sys

import pytest

from lipsync_jax import allocator

# What a `__main__` entry does first; then report whether tcmalloc is mapped and the arguments.
ENTRY = ('import sys; from lipsync_jax import allocator; allocator.use_tcmalloc(); '
         "print(any('tcmalloc' in line for line in open('/proc/self/maps')), sys.argv[1:])")


def run_entry(**env_extra) -> str:
  env = {k: v for k, v in os.environ.items() if k not in ('LD_PRELOAD', allocator.DISABLE_ENV)}
  env.update(env_extra)
  result = subprocess.run([sys.executable, '-c', ENTRY, 'two words', '--flag'], env=env,
                          capture_output=True, text=True, check=True)
  return result.stdout.strip()


@pytest.mark.skipif(allocator.find_tcmalloc() is None,
                    reason='no tcmalloc here (Debian/Ubuntu: apt-get install libtcmalloc-minimal4)')
def test_entry_reruns_under_tcmalloc_with_the_same_arguments():
  assert run_entry() == "True ['two words', '--flag']"


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='reads /proc/self/maps')
def test_opt_out_keeps_the_system_allocator():
  assert run_entry(**{allocator.DISABLE_ENV: '1'}) == "False ['two words', '--flag']"
