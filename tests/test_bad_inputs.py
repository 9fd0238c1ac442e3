"""Every CLI against a table of bad inputs and flag values, as a careless user would try them.

Each case asserts: the exit status; no traceback (the CLIs run in-process, so an escaping
exception fails the test with it); a message naming the problem; no new file in the output
folder unless the input was legitimately usable; every input byte-identical afterwards.
"""
import dataclasses
import hashlib
import json
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import zipfile
from typing import Callable, List, Optional

import numpy as np
import pytest
import scipy.io.wavfile

from conftest import (FACE_MODEL, MEDIA, PARITY, ROOT, ffmpeg, load_parity_weights,
                      random_checkpoint, require, save_pth)
from data_pipeline import curation, preprocess
from lipsync_jax import audio, cli, convert, evaluate, infer, lse, video
from lipsync_jax.live import avatar as avatars

TALKING_HEAD = MEDIA / 'talking_head_512_25fps.mp4'


class _Evil:
  def __reduce__(self):
    return os.system, ('touch pwned',)


def _write_float_wav(path, source, bad_value):
  wav = audio.load_audio(str(source))[:16000].copy()
  wav[4000:4010] = bad_value
  scipy.io.wavfile.write(str(path), 16000, wav.astype(np.float32))


@pytest.fixture(scope='module')
def inputs(tmp_path_factory):
  """Every input file the cases use, in one folder that is hashed before and after each case."""
  d = tmp_path_factory.mktemp('inputs')
  head, speech = require(TALKING_HEAD), require(MEDIA / 'speech_en_16k_stereo.wav')
  require(FACE_MODEL)
  ffmpeg('-i', speech, '-ss', '1', '-t', '1', '-ac', '1', d / 'speech.wav')
  ffmpeg('-i', speech, '-ss', '1', '-t', '2', '-ac', '1', d / 'speech2.wav')
  shutil.copy(d / 'speech.wav', d / '-x.wav')
  ffmpeg('-i', head, '-t', '1', '-c:v', 'libx264', '-c:a', 'aac', d / 'face.mp4')
  shutil.copy(MEDIA / 'face_photo.png', d / 'image.png')
  ffmpeg('-i', require(MEDIA / 'speech_850x480_30fps.mp4'), '-c', 'copy', '-metadata:s:v:0',
         'rotate=90', d / 'rotated.mp4')
  ffmpeg('-i', head, '-t', '2', '-movflags', '+faststart', d / 'whole.mp4')
  data = (d / 'whole.mp4').read_bytes()
  (d / 'truncated.mp4').write_bytes(data[:len(data) // 2])
  os.remove(d / 'whole.mp4')
  _write_float_wav(d / 'inf.wav', d / 'speech.wav', np.inf)
  _write_float_wav(d / 'nan.wav', d / 'speech.wav', np.nan)
  (d / 'empty.wav').write_bytes(b'')
  (d / 'text.wav').write_text('not audio\n')
  (d / 'corrupt.png').write_bytes(b'\x89PNG\r\n\x1a\n' + np.random.default_rng(2).bytes(200))
  (d / 'corrupt.pth').write_bytes(np.random.default_rng(1).bytes(300))
  (d / 'empty.pth').write_bytes(b'')
  (d / 'a_file').write_text('x')
  (d / 'bad.onnx').write_bytes(np.random.default_rng(3).bytes(1000))
  (d / 'folder').mkdir()
  with zipfile.ZipFile(d / 'notzip.pth', 'w') as z:
    z.writestr('hello.txt', 'a zip, not a torch file')
  with zipfile.ZipFile(d / 'evil.pth', 'w') as z:
    z.writestr('archive/data.pkl', pickle.dumps(_Evil(), protocol=2))
  random_checkpoint(d / 'ckpt', 'wav2lip')
  random_checkpoint(d / 'expert_ckpt', 'expert')
  shutil.copytree(d / 'ckpt', d / 'damaged_ckpt')
  for f in (d / 'damaged_ckpt' / '0' / 'variables' / 'ocdbt.process_0' / 'd').iterdir():
    f.write_bytes(b'garbage')
  if (PARITY / 'syncnet_weights.npz').exists():  # a full-size expert under unusual names
    pytest.importorskip('torch')
    weights = load_parity_weights('syncnet')
    save_pth(d / 'expert.PTH', weights, legacy=True)
    save_pth(d / 'expert.pth.tar', weights, legacy=False)
    first = next(k for k in sorted(weights) if np.ndim(weights[k]) == 4)
    save_pth(d / 'expert_shapes.pth', dict(weights, **{first: weights[first][:, :, :2]}),
             legacy=False)
  lse_weights = PARITY / 'lse' / 'syncnet_v2_weights.npz'
  if lse_weights.exists():  # joonson's SyncNet, sound and damaged in two ways
    pytest.importorskip('torch')
    with np.load(lse_weights) as z:
      syncnet = {k: z[k] for k in z.files}
    save_pth(d / 'syncnet.model', syncnet, legacy=True)
    shutil.copy(d / 'syncnet.model', d / 'syncnet.json')  # an input named like a report
    first = next(k for k in sorted(syncnet) if syncnet[k].ndim == 4)
    save_pth(d / 'syncnet_shapes.model', dict(syncnet, **{first: syncnet[first][:, :, :2]}),
             legacy=True)
    save_pth(d / 'syncnet_nan.model', dict(syncnet, **{first: np.full_like(syncnet[first],
                                                                           np.nan)}),
             legacy=True)
  (d / 'latin1_filelists').mkdir()
  (d / 'latin1_filelists' / 'train.txt').write_bytes('spk/good1 caf\xe9\n'.encode('latin-1'))
  (d / 'list.csv').write_text('face\n')  # a filelist whose name a --csv report could take
  (d / 'videos').mkdir()
  shutil.copy(d / 'face.mp4', d / 'videos' / 'face.mp4')
  _corpus(d / 'corpus', d)
  return d


def _corpus(root, d):
  """Two good clips, and one each with infinite audio samples, no face, and garbage bytes."""
  spk = root / 'spk'
  spk.mkdir(parents=True)
  ffmpeg('-i', require(TALKING_HEAD), '-t', '1.2', '-c:v', 'libx264', '-c:a', 'aac',
         spk / 'good1.mp4')
  ffmpeg('-i', TALKING_HEAD, '-ss', '3', '-t', '1.2', '-c:v', 'libx264', '-c:a', 'aac',
         spk / 'good2.mp4')
  # mov muxer under an .mp4 name: the only common container that keeps float PCM (and its inf)
  ffmpeg('-i', spk / 'good1.mp4', '-i', d / 'inf.wav', '-map', '0:v', '-map', '1:a', '-c:v',
         'copy', '-c:a', 'pcm_f32le', '-f', 'mov', spk / 'infaudio.mp4')
  ffmpeg('-f', 'lavfi', '-i', 'testsrc=size=320x240:rate=25', '-f', 'lavfi', '-i',
         'sine=frequency=300:sample_rate=16000', '-t', '1.2', '-pix_fmt', 'yuv420p',
         spk / 'noface.mp4')
  (spk / 'garbage.mp4').write_bytes(np.random.default_rng(4).bytes(5000))
  (root / 'empty').mkdir()


@dataclasses.dataclass
class Case:
  id: str
  cli: str  # infer | preprocess | convert | evaluate | avatar
  argv: List[str]  # {in}: the inputs folder, {out}: an empty output folder
  rc: int
  message: str  # expected in stderr (stdout too where the run succeeds)
  setup: Optional[Callable] = None  # (inputs, out) -> None: files the case puts in {out}
  cwd_inputs: bool = False
  needs: Optional[str] = None  # an input file that may be absent (parity weights), or 'beam'


def infer_cmd(*flags, face='{in}/face.mp4', audio_='{in}/speech.wav', ckpt='{in}/ckpt',
      out='{out}/result.mp4'):
  """infer's argv with these inputs and extra flags."""
  return ['--checkpoint_path', ckpt, '--face', face, '--audio', audio_, '--outfile', out,
          '--quiet', *flags]


def A(*flags, face='{in}/image.png', out='{out}/avatar'):
  """avatar prepare's argv."""
  return ['prepare', '--face', face, '--out', out, '--quiet', *flags]


def P(*flags, root='{in}/corpus', out='{out}/pre'):
  return ['--data_root', root, '--out', out, '--workers', '2', '--runner', 'local', *flags]


def E(*args, model='{in}/syncnet.model'):
  """evaluate's argv: VIDEO_OR_DIR and flags, judged by the SyncNet `model`."""
  return [*args, '--syncnet_model', model, '--quiet', '--compilation_cache', 'off']


def _link(kind):
  def make(d, out):
    target = d / ('face.mp4' if kind == 'hard' else 'speech.wav')
    (os.link if kind == 'hard' else os.symlink)(target, out / 'result.mp4')
  return make


CASES = [
    # outputs that are inputs
    Case('outfile_is_face', 'infer', infer_cmd(out='{in}/face.mp4'), 1, 'same file as --face'),
    Case('outfile_is_audio', 'infer', infer_cmd(face='{in}/image.png', out='{in}/speech.wav'), 2,
         "must end in .mp4"),
    Case('outfile_is_audio_track', 'infer', infer_cmd(face='{in}/image.png',
                                                      audio_='{in}/face.mp4',
                                                      out='{in}/face.mp4'), 1,
         'same file as --audio'),
    Case('outfile_hard_link_to_face', 'infer', infer_cmd(), 1, 'same file as --face',
         _link('hard')),
    Case('outfile_symlink_to_audio', 'infer', infer_cmd(face='{in}/image.png'), 1,
         'same file as --audio', _link('sym')),
    Case('outfile_is_a_folder', 'infer', infer_cmd(out='{out}/'), 2, '--outfile'),
    Case('outfile_existing_folder', 'infer', infer_cmd(out='{in}/folder'), 2, 'is a folder'),
    Case('outfile_wrong_extension', 'infer', infer_cmd(out='{out}/result.wav'), 2, '--outfile'),
    Case('outfile_under_a_file', 'infer', infer_cmd(out='{in}/a_file/result.mp4'), 1,
         'a_file: is a file'),
    Case('convert_onto_itself', 'convert', ['{in}/corrupt.pth', '{in}/corrupt.pth'], 1,
         'same file as checkpoint'),
    Case('preprocess_out_is_data_root', 'preprocess', P(out='{in}/corpus'), 1,
         'is the --data_root folder'),
    # audio
    Case('audio_with_inf', 'infer', infer_cmd(audio_='{in}/inf.wav'), 1,
         'inf.wav: the audio contains infinite samples'),
    Case('audio_with_nan', 'infer', infer_cmd(audio_='{in}/nan.wav'), 1, 'NaN samples'),
    Case('audio_empty_file', 'infer', infer_cmd(audio_='{in}/empty.wav'), 1, 'empty.wav'),
    Case('audio_text_file', 'infer', infer_cmd(audio_='{in}/text.wav'), 1, 'text.wav: unreadable'),
    Case('audio_missing', 'infer', infer_cmd(audio_='{in}/nope.wav'), 1, 'nope.wav: no such file'),
    Case('audio_named_like_an_option', 'infer',
         ['--checkpoint_path', '{in}/ckpt', '--face', '{in}/face.mp4', '--audio=-x.wav',
          '--outfile', '{out}/result.mp4', '--quiet'], 0, 'wrote', cwd_inputs=True),
    # faces and videos
    Case('face_missing', 'infer', infer_cmd(face='{in}/nope.mp4'), 1, 'nope.mp4: no such file'),
    Case('face_is_a_folder', 'infer', infer_cmd(face='{in}/folder'), 1, 'folder: is a folder'),
    Case('face_corrupt_image', 'infer', infer_cmd(face='{in}/corrupt.png'), 1,
         'not a readable image'),
    Case('face_rotated_phone_video', 'infer', infer_cmd(face='{in}/rotated.mp4'), 0, 'with a face'),
    Case('face_truncated_video', 'infer', infer_cmd(face='{in}/truncated.mp4',
                                            audio_='{in}/speech2.wav'), 0, 'truncated'),
    # flag values
    Case('box_negative', 'infer', infer_cmd('--box', '-5', '100', '0', '100'), 2, '--box'),
    Case('box_inverted', 'infer', infer_cmd('--box', '200', '100', '0', '100'), 2, '--box'),
    Case('box_beyond_frame', 'infer', infer_cmd('--box', '100', '900', '100', '300'), 1,
         '--box 100 900 100 300 reaches beyond the 512x512'),
    Case('pads_swallow_the_face', 'infer', infer_cmd('--pads', '-300', '-300', '0', '0'), 1,
         '--pads -300 -300 0 0 leave nothing'),
    Case('pads_absurd', 'infer', infer_cmd('--pads', '0', '99999', '0', '0'), 2, '--pads'),
    Case('pads_not_integers', 'infer', infer_cmd('--pads', '0', 'ten', '0', '0'), 2, '--pads'),
    Case('resize_factor_1000', 'infer', infer_cmd('--resize_factor', '1000'), 2, '--resize_factor'),
    Case('resize_factor_too_small_frames', 'infer', infer_cmd('--resize_factor', '64'), 1,
         '--resize_factor 64 shrinks the 512x512'),
    Case('resize_factor_zero', 'infer', infer_cmd('--resize_factor', '0'), 2, '--resize_factor'),
    Case('fps_nan', 'infer', infer_cmd('--fps', 'nan', face='{in}/image.png'), 2, '--fps'),
    Case('fps_inf', 'infer', infer_cmd('--fps', 'inf', face='{in}/image.png'), 2, '--fps'),
    Case('fps_tiny', 'infer', infer_cmd('--fps', '1e-9', face='{in}/image.png'), 2, '--fps'),
    Case('fps_text', 'infer', infer_cmd('--fps', 'fast', face='{in}/image.png'), 2, '--fps'),
    Case('wav2lip_batch_size_zero', 'infer', infer_cmd('--wav2lip_batch_size', '0'), 2,
         '--wav2lip_batch_size'),
    Case('face_det_batch_size_huge', 'infer', infer_cmd('--face_det_batch_size', '10000000'), 2,
         '--face_det_batch_size'),
    Case('crop_empty', 'infer', infer_cmd('--crop', '300', '100', '0', '-1'), 2, '--crop'),
    Case('crop_negative', 'infer', infer_cmd('--crop', '-5', '-1', '0', '-1'), 2, '--crop'),
    Case('paste_unknown', 'infer', infer_cmd('--paste', 'soft'), 2, '--paste'),
    # checkpoints and models
    Case('checkpoint_missing', 'infer', infer_cmd(ckpt='{in}/nope'), 1, 'nope: no such checkpoint'),
    Case('checkpoint_corrupt', 'infer', infer_cmd(ckpt='{in}/corrupt.pth'), 1,
         'corrupt.pth: not a readable PyTorch checkpoint'),
    Case('checkpoint_empty_file', 'infer', infer_cmd(ckpt='{in}/empty.pth'), 1,
         'empty.pth: not a readable PyTorch checkpoint'),
    Case('checkpoint_zip_not_torch', 'infer', infer_cmd(ckpt='{in}/notzip.pth'), 1,
         'notzip.pth: not a readable PyTorch checkpoint (a zip archive without data.pkl'),
    Case('checkpoint_unsafe_pickle', 'infer', infer_cmd(ckpt='{in}/evil.pth'), 1,
         'evil.pth: refusing to load posix.system'),
    Case('checkpoint_damaged_orbax', 'infer', infer_cmd(ckpt='{in}/damaged_ckpt'), 1,
         'cannot restore the variables'),
    Case('checkpoint_wrong_model', 'infer', infer_cmd(ckpt='{in}/expert_ckpt'), 1,
         "holds a 'expert' model"),
    Case('checkpoint_upper_case_pth', 'infer', infer_cmd(ckpt='{in}/expert.PTH'), 1,
         "expert.PTH: holds a 'expert' model", needs='expert.PTH'),
    Case('face_model_missing', 'infer', infer_cmd('--face_model', '{in}/nope.onnx'), 1,
         'nope.onnx: face detector model not found'),
    Case('face_model_garbage', 'infer', infer_cmd('--face_model', '{in}/bad.onnx'), 1,
         'bad.onnx: not a YuNet face detector model'),
    # convert
    Case('convert_pth_tar', 'convert', ['{in}/expert.pth.tar', '{out}/converted'], 0,
         'wrote expert checkpoint', needs='expert.pth.tar'),
    Case('convert_corrupt', 'convert', ['{in}/corrupt.pth', '{out}/converted'], 1,
         'corrupt.pth: not a readable PyTorch checkpoint'),
    Case('convert_unsafe', 'convert', ['{in}/evil.pth', '{out}/converted'], 1,
         'evil.pth: refusing to load'),
    Case('convert_out_is_a_file', 'convert', ['{in}/corrupt.pth', '{in}/a_file'], 1,
         'a_file: exists and is a file'),
    Case('convert_out_under_a_file', 'convert', ['{in}/corrupt.pth', '{in}/a_file/out'], 1,
         'a_file: is a file'),
    Case('convert_out_not_empty', 'convert', ['{in}/corrupt.pth', '{in}/corpus'], 1,
         'exists and is not empty'),
    # preprocess
    Case('preprocess_missing_root', 'preprocess', P(root='{in}/nope'), 1,
         'nope: no such folder'),
    Case('preprocess_no_clips', 'preprocess', P(root='{in}/corpus/empty'), 1, 'no clips found'),
    Case('preprocess_out_under_a_file', 'preprocess', P(out='{in}/a_file/pre'), 1,
         'a_file: is a file'),
    Case('preprocess_missing_filelists', 'preprocess', P('--filelists', '{in}/nope'), 1,
         'nope: no such folder (--filelists)'),
    Case('preprocess_zero_workers', 'preprocess', P('--workers', '0'), 2, '--workers'),
    Case('preprocess_min_seconds_nan', 'preprocess', P('--min_seconds', 'nan'), 2,
         'argument --min_seconds: nan is not finite'),
    Case('preprocess_min_face_inf', 'preprocess', P('--min_face', 'inf'), 2,
         'argument --min_face: inf is not finite'),
    Case('preprocess_min_face_score_above_1', 'preprocess', P('--min_face_score', '2'), 2,
         'argument --min_face_score: 2 is outside 0..1'),
    Case('preprocess_min_sync_conf_nan', 'preprocess',
         P('--sync_judge', '{in}/expert_ckpt', '--min_sync_conf', 'nan'), 2,
         'argument --min_sync_conf: nan is not finite'),
    Case('preprocess_beam_flag_typo', 'preprocess',
         ['--data_root', '{in}/corpus', '--out', '{out}/pre', '--runner', 'DirectRunner',
          '--min_secnds', '3'], 2, 'did you mean --min_seconds?', needs='beam'),
    Case('preprocess_filelist_not_utf8', 'preprocess', P('--filelists', '{in}/latin1_filelists'),
         1, 'train.txt: not UTF-8 text (--filelists): byte 0xe9'),
    Case('preprocess_sync_judge_wrong_shapes', 'preprocess',
         P('--sync_judge', '{in}/syncnet_shapes.model'), 1,
         'syncnet_shapes.model: params/aud/cnn_0/kernel has shape (2, 3, 1, 64)',
         needs='syncnet.model'),
    # evaluate
    Case('evaluate_csv_is_the_filelist', 'evaluate',
         E('{in}', '--filelist', '{in}/list.csv', '--csv', '{in}/list.csv'), 1,
         'is the same file as --filelist'),
    Case('evaluate_json_is_the_syncnet_model', 'evaluate',
         E('{in}/videos', '--json', '{in}/syncnet.json', model='{in}/syncnet.json'), 1,
         'is the same file as --syncnet_model', needs='syncnet.model'),
    Case('evaluate_json_is_the_csv', 'evaluate',
         E('{in}/videos', '--json', '{out}/r.json', '--csv', '{out}/r.json'), 2,
         "argument --csv: '"),
    Case('evaluate_plot_dir_is_a_file', 'evaluate', E('{in}/videos', '--plot', '{in}/a_file'),
         1, 'a_file: is a file', needs='syncnet.model'),
    Case('evaluate_filelist_not_utf8', 'evaluate',
         E('{in}', '--filelist', '{in}/latin1_filelists/train.txt'), 1,
         'train.txt: not UTF-8 text (--filelist): byte 0xe9'),
    Case('evaluate_syncnet_wrong_shapes', 'evaluate',
         E('{in}/videos', model='{in}/syncnet_shapes.model'), 1,
         'syncnet_shapes.model: params/aud/cnn_0/kernel has shape (2, 3, 1, 64)',
         needs='syncnet.model'),
    Case('evaluate_syncnet_nan', 'evaluate', E('{in}/videos', model='{in}/syncnet_nan.model'),
         1, 'holds NaN or Inf values', needs='syncnet.model'),
    Case('evaluate_expert_wrong_shapes', 'evaluate',
         ['{in}/videos', '--judge', 'expert', '--checkpoint', '{in}/expert_shapes.pth',
          '--quiet'], 1, 'expert_shapes.pth: audio_encoder.0.conv_block.0.weight: shape',
         needs='expert.PTH'),
    Case('preprocess_expert_judge_wrong_shapes', 'preprocess',
         P('--sync_judge', '{in}/expert_shapes.pth'), 1,
         'expert_shapes.pth: audio_encoder.0.conv_block.0.weight: shape', needs='expert.PTH'),
    Case('evaluate_expert_missing', 'evaluate',
         ['{in}/videos', '--judge', 'expert', '--checkpoint', '{in}/nope', '--quiet'], 1,
         'nope: no such checkpoint'),
    # avatar prepare
    Case('avatar_from_a_photo', 'avatar', A(), 0, '1 frames at 25 fps, 96 px faces'),
    Case('avatar_face_missing', 'avatar', A(face='{in}/nope.mp4'), 1, 'nope.mp4: no such file'),
    Case('avatar_face_corrupt_image', 'avatar', A(face='{in}/corrupt.png'), 1,
         'corrupt.png: not a readable image'),
    Case('avatar_out_is_the_face', 'avatar', A(out='{in}/image.png'), 1, 'same file as --face'),
    Case('avatar_out_holds_other_files', 'avatar', A(out='{in}'), 1,
         'holds other files (-x.wav, a_file, bad.onnx) and no avatar'),
    Case('avatar_out_under_a_file', 'avatar', A(out='{in}/a_file/avatar'), 1, 'a_file: is a file'),
    Case('avatar_img_size_not_a_model_size', 'avatar', A('--img_size', '100'), 1,
         'img_size 100 is not 96 times'),
    Case('avatar_fps_nan', 'avatar', A('--fps', 'nan'), 2, '--fps'),
]

MAINS = {'infer': infer.main, 'preprocess': preprocess.main, 'convert': convert.main,
         'evaluate': evaluate.main, 'avatar': avatars.main}


def _snapshot(folder) -> dict:
  return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
          for p in sorted(folder.rglob('*')) if p.is_file() and not p.is_symlink()}


def _listing(folder) -> list:
  return sorted(str(p.relative_to(folder)) for p in folder.rglob('*'))


@pytest.fixture(autouse=True)
def face_model(monkeypatch):
  monkeypatch.setenv('LIPSYNC_JAX_FACE_MODEL', str(require(FACE_MODEL)))


@pytest.mark.parametrize('case', CASES, ids=[c.id for c in CASES])
def test_bad_input(case, inputs, tmp_path, capsys, monkeypatch):
  if case.needs == 'beam':
    pytest.importorskip('apache_beam')
  elif case.needs and not (inputs / case.needs).exists():
    pytest.skip(f'{case.needs} needs the parity weights and torch')
  out = tmp_path / 'out'
  out.mkdir()
  if case.setup:
    case.setup(inputs, out)
  if case.cwd_inputs:
    monkeypatch.chdir(inputs)
  argv = [a.replace('{in}', str(inputs)).replace('{out}', str(out)) for a in case.argv]
  before, listed = _snapshot(inputs), _listing(out)
  try:
    rc = MAINS[case.cli](argv)
  except SystemExit as e:  # argparse
    rc = e.code
  stdout, stderr = capsys.readouterr()
  assert rc == case.rc, stderr[-2000:]
  assert 'Traceback' not in stderr, stderr
  assert case.message in (stderr if rc else stdout + stderr), stderr[-2000:]
  assert _snapshot(inputs) == before  # every input byte-identical
  assert not (inputs / 'pwned').exists()
  if rc:
    assert _listing(out) == listed  # nothing left behind
    return
  if case.cli == 'infer':
    written = [f for f in os.listdir(out) if f not in listed]
    assert written == ['result.mp4'], written
    info = video.probe_video(str(out / 'result.mp4'))
    if case.id == 'face_rotated_phone_video':  # decoded upright (850x480 stored)
      assert (info.width, info.height) == (480, 850)
  if case.cli == 'avatar':
    assert os.listdir(out) == ['avatar']
    assert len(avatars.load(str(out / 'avatar'), img_size=96)) == 1


@pytest.mark.slow
def test_bad_clips_are_skipped_and_named(inputs, tmp_path, capsys):
  """Bad clips among good ones: each skipped and named with its reason (infinite audio
  samples, no face, garbage bytes), the good ones kept, no temporary files in the clip cache,
  the inputs untouched."""
  out = tmp_path / 'pre'
  before = _snapshot(inputs)
  assert preprocess.main(P(root=str(inputs / 'corpus'), out=str(out))) == 0
  text, err = capsys.readouterr()
  assert 'Traceback' not in err and _snapshot(inputs) == before
  assert 'skipped 3 clips or records' in text
  assert 'spk/infaudio: bad audio: ' in text and 'infinite samples' in text
  assert 'spk/noface: no face' in text and 'spk/garbage: unreadable' in text
  assert 'train' in text.split('wrote')[1]
  assert sorted(os.listdir(out / '_clips' / 'spk')) == ['good1.npz', 'good2.npz']


def _train(*flags, workdir):
  return subprocess.run(
      [sys.executable, '-m', 'lipsync_jax.train', '--workdir', str(workdir), *flags],
      cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_train_refuses_bad_setups(inputs, tmp_path):
  """train's CLI: a missing dataset and a workdir that would overwrite the expert are refused
  before any compilation, with exit status 1 and no traceback."""
  proc = _train('--config', 'configs/expert.py:tiny', f'--config.data.dir={tmp_path}/nope',
                workdir=tmp_path / 'run')
  assert proc.returncode == 1 and 'Traceback' not in proc.stderr, proc.stderr[-2000:]
  assert 'nope: not a dataset written by data_pipeline.preprocess' in proc.stderr
  no_val = tmp_path / 'no_val'  # e.g. one clip held out in both val.txt and test.txt
  no_val.mkdir()
  (no_val / 'dataset_info.json').write_text('{"splits": [{"name": "train"}, {"name": "test"}]}')
  proc = _train('--config', 'configs/expert.py:tiny', f'--config.data.dir={no_val}',
                workdir=tmp_path / 'run2')
  assert proc.returncode == 1 and 'Traceback' not in proc.stderr, proc.stderr[-2000:]
  assert "the dataset has no val split (it has ['test', 'train'])" in proc.stderr
  expert = tmp_path / 'expert_run'
  shutil.copytree(inputs / 'expert_ckpt', expert / 'checkpoints')
  before = _snapshot(expert)
  proc = _train('--config', 'configs/wav2lip.py:tiny', f'--config.data.dir={tmp_path}',
                f'--config.expert_checkpoint={expert}', workdir=expert)
  assert proc.returncode == 1 and 'Traceback' not in proc.stderr, proc.stderr[-2000:]
  assert 'would overwrite the expert' in proc.stderr
  assert _snapshot(expert) == before


OPTION_CASES = [
    (dict(fps=float('inf')), 'fps: inf is not finite'),
    (dict(fps=float('nan')), 'fps: nan is not finite'),
    (dict(fps=0.5), 'fps: 0.5 is outside 1..240'),
    (dict(pads=(1, 2)), 'pads: (1, 2) is not a sequence of 4 values'),
    (dict(pads=(0, 10, 0, 0.5)), 'pads: 0.5 is not an integer'),
    (dict(wav2lip_batch_size=2.5), 'wav2lip_batch_size: 2.5 is not an integer'),
    (dict(wav2lip_batch_size=0), 'wav2lip_batch_size: 0 is outside 1..4096'),
    (dict(resize_factor=1.5), 'resize_factor: 1.5 is not an integer'),
    (dict(face_det_batch_size=True), 'face_det_batch_size: True is not an integer'),
    (dict(static='yes'), "static: 'yes' is not True or False"),
    (dict(paste='soft'), "paste: 'soft' is not one of 'feather', 'hard'"),
    (dict(crop='0 -1 0 -1'), 'crop: '),
    (dict(face_model=3), 'face_model: expected a path (str or os.PathLike), got 3'),
]


@pytest.mark.parametrize('fields,message', OPTION_CASES, ids=[m.split(':')[0] + str(i) for i, (
    _, m) in enumerate(OPTION_CASES)])
def test_options_check_every_field_on_creation(fields, message):
  with pytest.raises(infer.InferenceError) as e:
    infer.Options(**fields)
  assert str(e.value).startswith(message)


def test_options_accept_what_the_flags_give():
  options = infer.Options(fps=np.float64(30), pads=[0, np.int64(20), 0, 0], resize_factor=2,
                          face_model=ROOT / 'x.onnx')
  assert options.pads == (0, 20, 0, 0) and options.face_model == str(ROOT / 'x.onnx')


@pytest.mark.parametrize('argument,value', [('face', None), ('face', 3), ('face', b'a.mp4'),
                                            ('audio_path', None), ('checkpoint', 1.5),
                                            ('outfile', ''), ('options', [1]),
                                            ('options', {'fps': 30, 'speed': 2})])
def test_lipsync_api_names_bad_arguments(argument, value, tmp_path):
  kwargs = dict(face='f.mp4', audio_path='a.wav', checkpoint='c.pth',
                outfile=str(tmp_path / 'o.mp4'))
  kwargs[argument] = value
  with pytest.raises(cli.UserError, match=f'^{argument}: '):
    infer.lipsync(**kwargs)
  assert not os.listdir(tmp_path)


@pytest.mark.parametrize('rule,value,message', [
    ('min_seconds', float('nan'), 'min_seconds: nan is not finite'),
    ('max_seconds', float('inf'), 'max_seconds: inf is not finite'),
    ('min_face', -1.0, 'min_face: -1.0 is outside 0..10000'),
    ('min_score', 1.5, 'min_score: 1.5 is outside 0..1'),
    ('face_size', 96.0, 'face_size: 96.0 is not an integer'),
    ('split_shots', 1, 'split_shots: 1 is not True or False')])
def test_curation_rules_are_checked_on_creation(rule, value, message):
  with pytest.raises(cli.UserError, match=re.escape(message)):
    curation.Curation(**{rule: value})


def test_evaluate_plots_of_videos_with_one_name(inputs, tmp_path, capsys):
  """Every LRS2 speaker has a 00001.mp4: each video gets its own plot."""
  if not (inputs / 'syncnet.model').exists():
    pytest.skip('needs the LSE parity weights and torch')
  for speaker in ('s1', 's2'):
    (tmp_path / 'D' / speaker).mkdir(parents=True)
    shutil.copy(inputs / 'face.mp4', tmp_path / 'D' / speaker / '00001.mp4')
  plots = tmp_path / 'plots'
  assert evaluate.main(E(str(tmp_path / 'D'), '--plot', str(plots), model=str(
      inputs / 'syncnet.model'))) == 0
  assert 'Traceback' not in capsys.readouterr().err
  assert sorted(os.listdir(plots)) == ['offset_histogram.png', 's1_00001_offsets.png',
                                       's2_00001_offsets.png']
  assert evaluate.plot_names(['a/x.mp4', 'b/x.mp4', 'c.mp4']) == {
      'a/x.mp4': 'a_x', 'b/x.mp4': 'b_x', 'c.mp4': 'c'}


def test_evaluate_reports_appear_together_or_not_at_all(tmp_path, monkeypatch):
  """A signal while the plots are drawn: no report, no plot, no temporary file is left; the
  reports that were there before are untouched."""
  rows = [{'video': f'{name}.mp4', 'track': '', 'lse_d': 7.0, 'lse_c': float('nan'),
           'offset': 1, 'mean_dists': [7.0, 7.5, 8.0]} for name in ('a', 'b', 'c')]
  (tmp_path / 'old.csv').write_text('kept\n')
  drawn = []

  def plot(*args, **kwargs):
    drawn.append(args[2])
    if len(drawn) == 2:
      raise cli.Interrupted(signal.SIGINT)
    return args[2]

  monkeypatch.setattr(evaluate.logs, 'plot_scalars', plot)
  with pytest.raises(cli.Interrupted):
    evaluate.write_reports(rows, str(tmp_path / 'r.json'), str(tmp_path / 'old.csv'),
                           str(tmp_path / 'plots'))
  assert sorted(os.listdir(tmp_path)) == ['old.csv', 'plots']
  assert not os.listdir(tmp_path / 'plots') and (tmp_path / 'old.csv').read_text() == 'kept\n'
  monkeypatch.undo()
  evaluate.write_reports(rows, str(tmp_path / 'r.json'), str(tmp_path / 'old.csv'),
                         str(tmp_path / 'plots'))
  report = json.loads((tmp_path / 'r.json').read_text())  # strict JSON: a NaN score is null
  assert report[0]['lse_c'] is None and report[0]['lse_d'] == 7.0
  assert len(os.listdir(tmp_path / 'plots')) == 4


@pytest.mark.parametrize('call', [
    lambda d: preprocess.preprocess(None, str(d / 'out')),
    lambda d: preprocess.preprocess(str(d), 3),
    lambda d: preprocess.PreprocessOptions(filelists=b'lists'),
    lambda d: preprocess.PreprocessOptions(rules={'min_face': 10}),
    lambda d: lse.score_video(None, syncnet=None),
    lambda d: lse.score_with_expert(7, expert=None),
    lambda d: convert.convert(None, str(d / 'converted')),
], ids=['preprocess_root_none', 'preprocess_out_int', 'preprocess_filelists_bytes',
        'preprocess_rules_dict', 'score_video_none', 'score_with_expert_int', 'convert_none'])
def test_apis_name_arguments_that_are_not_paths(call, tmp_path):
  with pytest.raises(cli.UserError, match=r'^\w+: expected a'):
    call(tmp_path)
  assert not os.listdir(tmp_path)
