"""Gen-1's structure fidelity on the toy world: the embedded checkpoint moved to 'depth_latent' and trained over t_s 0..7.

  vidjax train --config configs/toy_fidelity.py --workdir runs/toy_fidelity
  vidjax convert run runs/toy_fidelity weights/toy_fidelity

The checkpoint behind the t_s curve of `vidjax fidelity` (Gen-1 Fig. 6 and 10): like Gen-1's stage 4,
the structure is the VAE-encoded depth plus the four sinusoidal t_s channels, and each clip's depth
is blurred by a t_s drawn from 0..7 (t_s iterations of blur + 2x downsample; at 64x64, t_s 6 and 7
leave one value per frame). The embedded checkpoint's UNet (spatial and temporal layers), VAE and
text tower are the start: conv_in keeps its latent channels' weights and starts blind to the new
structure channels (`replace_structure_channels`), and the whole UNet trains; the VAE and the text
tower stay frozen.
"""

from __future__ import annotations

from configs import toy


def get_config():
  config = toy.get_config()
  config.data.build.num_examples = 1024
  config.data.structure_fidelity_min, config.data.structure_fidelity_max = 0, 7
  config.model.structure = "depth_latent"
  latent = config.model.vae.latent_channels
  config.model.unet.in_channels = latent + latent + 4
  config.init_exclude = ()
  config.init_surgery = ("replace_structure_channels",)
  config.train.trainable = ("unet/.*",)
  config.train.num_steps = 1200
  config.train.lr = 3e-4
  config.train.warmup_steps = 50
  config.train.ema_decay = 0.99
  config.checkpoint.every_steps = 200
  config.log.sample_every_steps = 1200
  return config
