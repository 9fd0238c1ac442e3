"""Official-checkpoint conversion: both PyTorch formats, wrappers, the CLI, and refusal of
malicious pickles. torch (CPU) is used here only to write the fixture files."""
import os
import pickle
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import (ROOT, load_parity_weights, mels_to_nhwc, nchw_to_nhwc, parity, rel_l2,
                      save_pth as _save_pth)
from lipsync_jax import checkpoint, convert, torch_pickle

torch = pytest.importorskip('torch')
PARITY_NAME = {'wav2lip': 'wav2lip', 'expert': 'syncnet', 'quality_disc': 'disc'}


@pytest.mark.parametrize('legacy', [True, False], ids=['legacy', 'zip'])
def test_reader_matches_torch_load(tmp_path, legacy):
  state_dict = {'a.weight': np.arange(24, dtype=np.float32).reshape(2, 3, 4),
                'b': np.array([1, 2, 3], np.int64), 'c': np.float64(2.5),
                'half': np.ones(3, np.float16)}
  path = _save_pth(tmp_path / 'x.pth', state_dict, legacy, wrap='state_dict')
  # a non-contiguous view and a tensor sharing storage
  base = torch.arange(20.0).reshape(4, 5)
  torch.save({'view': base[:, 1::2], 'base': base}, tmp_path / 'v.pth',
             _use_new_zipfile_serialization=not legacy)
  loaded = torch_pickle.load(path)
  assert loaded['global_step'] == 1234
  for k, v in state_dict.items():
    np.testing.assert_array_equal(loaded['state_dict'][k], v)
    assert loaded['state_dict'][k].dtype == np.asarray(v).dtype
  views = torch_pickle.load(str(tmp_path / 'v.pth'))
  np.testing.assert_array_equal(views['view'], base[:, 1::2].numpy())
  np.testing.assert_array_equal(views['base'], base.numpy())


class _Exploit:
  def __reduce__(self):
    return (os.system, ('touch pwned',))


@pytest.mark.parametrize('legacy', [True, False], ids=['legacy', 'zip'])
def test_malicious_pickle_is_refused(tmp_path, legacy, monkeypatch):
  monkeypatch.chdir(tmp_path)
  path = tmp_path / 'evil.pth'
  torch.save({'state_dict': {'w': torch.zeros(2)}, 'payload': _Exploit()}, path,
             _use_new_zipfile_serialization=not legacy)
  with pytest.raises(torch_pickle.UnsafeCheckpointError, match='system'):
    torch_pickle.load(str(path))
  plain = tmp_path / 'evil.pkl'
  plain.write_bytes(pickle.dumps(_Exploit()))
  with pytest.raises(pickle.UnpicklingError, match='not a PyTorch checkpoint'):
    torch_pickle.load(str(plain))
  assert not (tmp_path / 'pwned').exists()


@pytest.mark.parametrize('legacy', [True, False], ids=['legacy', 'zip'])
def test_damaged_files_give_a_clear_error(tmp_path, legacy):
  # Random bytes once reached the unpickler and died with a MemoryError on a garbage length:
  # every damaged file must end in the same ConversionError, whatever the parser trips on.
  good = _save_pth(tmp_path / 'good.pth', {'w': np.ones((64, 64), np.float32)}, legacy,
                   wrap='state_dict')
  content = open(good, 'rb').read()
  noise = [np.random.default_rng(seed).bytes(300) for seed in range(60)]  # 38, 50 broke it
  damaged = noise + [content[:40] + n for n in noise[:20]]
  damaged += [content[:n] for n in (10, 30, len(content) // 2, len(content) - 7)]
  for i, data in enumerate(damaged):
    path = tmp_path / f'bad{i}.pth'
    path.write_bytes(data)
    with pytest.raises(convert.ConversionError, match=f'bad{i}.pth: not a readable PyTorch'):
      convert.load_official(str(path))


@pytest.mark.slow
@pytest.mark.parametrize('name,legacy,wrap,prefix', [
    ('wav2lip', True, 'state_dict', 'module.'),
    ('expert', False, None, ''),
    ('quality_disc', True, None, 'module.'),
])
def test_converted_models_reproduce_parity(tmp_path, name, legacy, wrap, prefix):
  path = _save_pth(tmp_path / f'{name}.pth', load_parity_weights(PARITY_NAME[name]), legacy,
                   wrap, prefix)
  got_name, module, variables = convert.load_official(path)
  assert got_name == name
  io = parity(f'{PARITY_NAME[name]}_io')
  if name == 'wav2lip':
    out = jax.jit(module.apply)(variables, mels_to_nhwc(io['in/mel_4d']),
                                nchw_to_nhwc(io['in/face_4d']))
    assert rel_l2(np.moveaxis(out, -1, 1), io['f64/eval_4d']) < 1e-5
  elif name == 'expert':
    audio_emb, _ = jax.jit(module.apply)(variables, mels_to_nhwc(io['in/mel']),
                                         nchw_to_nhwc(io['in/face']))
    assert rel_l2(audio_emb, io['f64/eval_audio_emb']) < 3e-5
  else:
    pred = jax.jit(module.apply)(variables, np.moveaxis(io['in/face_5d'], 1, -1))
    assert rel_l2(pred, io['f64/eval_pred']) < 1e-5


@pytest.mark.slow
def test_cli_writes_a_loadable_checkpoint(tmp_path):
  pth = _save_pth(tmp_path / 'lipsync_expert.pth', load_parity_weights('syncnet'), legacy=True,
                  wrap='state_dict')
  out = tmp_path / 'converted'
  proc = subprocess.run([sys.executable, '-m', 'lipsync_jax.convert', pth, str(out)],
                        capture_output=True, text=True, cwd=ROOT)
  assert proc.returncode == 0, proc.stderr
  assert '16,435,072 parameters' in proc.stdout and '2.42 GFLOP' in proc.stdout
  name, module, variables = checkpoint.load_model(str(out), expect='expert')
  io = parity('syncnet_io')
  audio_emb, _ = module.apply(variables, mels_to_nhwc(io['in/mel']), nchw_to_nhwc(io['in/face']))
  assert rel_l2(audio_emb, io['f64/eval_audio_emb']) < 3e-5
  with pytest.raises(checkpoint.CheckpointError, match="'wav2lip' is needed"):
    checkpoint.load_model(str(out), expect='wav2lip')


def test_cli_rejects_bad_files(tmp_path):
  junk = tmp_path / 'junk.pth'
  junk.write_bytes(b'\x80\x02}q\x00.' + b'garbage')
  other = _save_pth(tmp_path / 'other.pth', {'fc.weight': np.zeros((2, 2), np.float32)}, False)
  for path, message in [(tmp_path / 'missing.pth', 'no such file'),
                        (junk, 'not a readable PyTorch checkpoint'),
                        (other, 'matches none of the Wav2Lip networks')]:
    proc = subprocess.run([sys.executable, '-m', 'lipsync_jax.convert', str(path),
                           str(tmp_path / 'out')], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 1 and message in proc.stderr, proc.stderr
    assert not (tmp_path / 'out').exists()
