"""Generator + visual quality discriminator, as hq_wav2lip_train.py."""
from configs import wav2lip


def get_config(variant=None):
  c = wav2lip.get_config(variant)
  c.syncnet_wt_after = 0.03
  c.disc_wt = 0.07
  c.adam_b1 = 0.5  # both generator and discriminator
  c.disc_learning_rate = 1e-4
  c.disc_init_from = ''  # the discriminator's warm start, as init_from is the generator's
  return c
