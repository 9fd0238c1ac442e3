"""Warm starts (config.init_from) and frozen layers (config.freeze): a fine-tune from an
official-format .pth starts from exactly its weights; a source of another face size gives what
matches and reports the rest; a source of another network or width is refused; a resume after a
warm start is exact; frozen parameters do not move."""
import jax
import numpy as np
import pytest
from flax import traverse_util

from configs import expert, wav2lip
from conftest import load_parity_weights, random_checkpoint, save_pth
from lipsync_jax import checkpoint, convert, models, train, warm_start


def _flat(tree) -> dict:
  return {'/'.join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(
      jax.device_get(tree)).items()}


def _expert_config(data_dir, **overrides):
  config = expert.get_config('tiny')
  config.data.dir, config.data.workers, config.batch_size = data_dir, 0, 8
  config.eval_batches, config.log_every, config.eval_every = 1, 1000, 1000
  config.update(overrides)
  return config


@pytest.mark.slow
def test_fine_tune_from_an_official_pth_starts_from_its_weights(synthetic_dataset, tmp_path,
                                                                 capsys):
  data_dir, _ = synthetic_dataset
  pytest.importorskip('torch')
  pth = save_pth(tmp_path / 'wav2lip_gan.pth', load_parity_weights('wav2lip'), legacy=False,
                 wrap='state_dict')
  config = wav2lip.get_config()  # full size, as the official checkpoint
  config.data.dir, config.data.workers, config.batch_size = data_dir, 0, 1
  config.expert_checkpoint = random_checkpoint(tmp_path / 'expert', 'expert')
  config.init_from = pth
  run = train.Run(config, str(tmp_path / 'run'))
  try:
    run.warm_start()
  finally:
    run.close()
  assert 'wav2lip from ' in capsys.readouterr().out
  name, module, official = convert.load_official(pth)
  assert name == 'wav2lip'
  state = {'params': run.state.params, 'batch_stats': run.state.batch_stats}
  got, want = _flat(state), _flat(official)
  assert got.keys() == want.keys()
  for key in want:
    np.testing.assert_array_equal(got[key], want[key], err_msg=key)
  # the first step's forward: the converted model's, exactly
  rng = np.random.default_rng(0)
  mels = rng.uniform(-4, 4, (2,) + models.MEL_SHAPE).astype(np.float32)
  faces = rng.uniform(0, 1, (2, 96, 96, 6)).astype(np.float32)
  np.testing.assert_array_equal(jax.jit(run.model.apply)(jax.device_get(state), mels, faces),
                                jax.jit(module.apply)(official, mels, faces))


@pytest.mark.parametrize('name', ['wav2lip', 'expert', 'quality_disc'])
def test_an_hq_model_takes_every_layer_of_a_96_px_one(name, tmp_path):
  """Each 96 px layer lands in its place in the 192 px network (the encoder's later layers move
  down by the stage added); only the stage is new, and only the generator's output block, which
  reads one skip less wide, is skipped."""
  source = random_checkpoint(tmp_path / 'g96', name)
  module = models.build(name, 8, img_size=192)
  fresh = jax.device_get(models.init(module, name, jax.random.key(1)))
  merged = warm_start.load_into(fresh, source, name, 192, 0.5)
  _, _, source_vars = checkpoint.load_model(source)
  rename = models.renamed_for_size(name, 96, 192)
  src = {'/'.join((k[0], rename(k[1])) + k[2:]): np.asarray(v)
         for k, v in traverse_util.flatten_dict(source_vars).items()}
  got, new = _flat(merged.variables), _flat(fresh)
  skipped = {k for k in src if k in got and src[k].shape != got[k].shape}
  assert skipped == ({'params/output_block_0/conv/kernel'} if name == 'wav2lip' else set())
  assert set(src) <= set(got)  # every 96 px layer has its place
  for key in got:
    want = src[key] if key in src and key not in skipped else new[key]
    np.testing.assert_array_equal(got[key], want, err_msg=key)
  added = [k for k in got if k not in src]
  assert added and all('encoder' in k or 'decoder_blocks_7' in k for k in added)
  assert 0.99 < merged.fraction < 1  # the added stages are thin
  assert 'new' in merged.table and 'skipped' in merged.table


def test_freeze_loaded_names_what_the_source_provides(tmp_path):
  """config.freeze 'loaded' (a 192 px generator from a 96 px one): every parameter the warm
  start takes is frozen, the added stages and the reshaped output layer are not."""
  config = wav2lip.get_config('hq192_tiny')
  config.freeze = 'loaded'
  with pytest.raises(warm_start.WarmStartError, match='config.init_from is not set'):
    warm_start.freeze_prefixes(config)
  config.init_from = random_checkpoint(tmp_path / 'g96', 'wav2lip')
  config.freeze = 'loaded, audio_encoder_0'
  frozen = set(warm_start.freeze_prefixes(config).split(','))
  module = models.build('wav2lip', config.model.width_divisor, img_size=192)
  params = _flat(models.init(module, 'wav2lip', jax.random.key(0))['params'])
  assert 'audio_encoder_0' in frozen and frozen - {'audio_encoder_0'} <= set(params)
  trained = set(params) - frozen
  assert trained and all(k.startswith(('face_encoder_blocks_1_', 'face_decoder_blocks_7_'))
                         or k == 'output_block_0/conv/kernel' for k in trained)
  assert 'face_encoder_blocks_2_0/conv/kernel' in frozen  # the 96 px block 1, moved down


def test_sources_of_another_network_or_width_are_refused(tmp_path):
  module = models.build('wav2lip', 1)
  full = jax.eval_shape(lambda: models.init(module, 'wav2lip', jax.random.key(0)))
  tiny = random_checkpoint(tmp_path / 'tiny', 'wav2lip')
  with pytest.raises(warm_start.WarmStartError,
                     match=r'tiny: only 0\.0% of the wav2lip parameters fit'):
    warm_start.load_into(full, tiny, 'wav2lip', 96, 0.5)
  judge = random_checkpoint(tmp_path / 'judge', 'expert')
  with pytest.raises(convert.ConversionError, match="holds a 'expert' model, but a 'wav2lip'"):
    warm_start.load_into(full, judge, 'wav2lip', 96, 0.5)


@pytest.mark.slow
def test_resume_after_a_warm_start_is_exact_and_frozen_layers_stay(synthetic_dataset, tmp_path):
  data_dir, _ = synthetic_dataset
  source = train.train(_expert_config(data_dir, total_steps=1), str(tmp_path / 'source'))
  config = _expert_config(data_dir, total_steps=4, checkpoint_every=2,
                          init_from=str(tmp_path / 'source'), freeze='audio_encoder')
  straight = train.train(config, str(tmp_path / 'straight'))
  assert train.train(config, str(tmp_path / 'resumed'), stop_after=2)['step'] == 2
  resumed = train.train(config, str(tmp_path / 'resumed'))
  assert resumed['step'] == 4
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(straight['state'].params),
               jax.device_get(resumed['state'].params))
  before, after = _flat(source['state'].params), _flat(straight['state'].params)
  frozen = [k for k in before if k.startswith('audio_encoder')]
  trained = [k for k in before if not k.startswith('audio_encoder')]
  assert frozen and trained
  for key in frozen:
    np.testing.assert_array_equal(after[key], before[key], err_msg=key)
  assert any(not np.array_equal(after[k], before[k]) for k in trained)
  config.freeze = 'audio_encoders'
  with pytest.raises(warm_start.WarmStartError, match="'audio_encoders' is the start of no"):
    train.train(config, str(tmp_path / 'bad_freeze'))
