"""Generator trained with L1 + the frozen expert's sync loss, as wav2lip_train.py."""
from configs import common


def get_config(variant=None):
  c = common.base('wav2lip', variant)
  tiny = c.model.width_divisor > 1
  c.batch_size = 8 if tiny else 16  # windows of 5 frames
  c.total_steps = 1500 if tiny else 1_000_000
  c.eval_every = 100 if tiny else 3000
  c.eval_batches = 8 if tiny else 700
  # An expert workdir or an official lipsync_expert.pth, of any width.
  c.expert_checkpoint = ''
  c.expert_train_mode = True  # the reference leaves the frozen expert's BatchNorm in train mode
  c.syncnet_wt = 0.0  # until the eval sync loss drops below sync_threshold ...
  c.syncnet_wt_after = 0.01  # ... then this, for good
  c.sync_threshold = 0.75
  c.disc_wt = 0.0  # no visual quality discriminator
  # At each eval, this many val clips re-generated whole and judged by the expert: eval_lse_d /
  # eval_lse_c (LSE-style, on the expert's cosine scale). 0: off (it costs a pass over them).
  c.eval_lse_clips = 0
  return c
