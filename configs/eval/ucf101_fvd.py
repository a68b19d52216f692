"""Make-Your-Video's zero-shot UCF-101 FVD and KVD (Table 1 and 2 of the paper, Sec. 4.2).

  vidjax convert make-your-video model.ckpt weights/myv --tokenizer ... --depth-estimator ...
  vidjax convert i3d i3d_pretrained_400.pt weights/i3d
  vidjax evaluate --config configs/eval/ucf101_fvd.py --workdir runs/ucf101 --config.checkpoint=weights/myv \\
      --config.i3d_dir=weights/i3d --config.ucf101_dir=UCF-101          # <dir>/<ClassName>/v_*.avi
  ... --config.real_source=tfds --config.tfds_data_dir=DIR              # or TFDS `ucf101`, prepared locally

What the paper states: FVD and KVD compare 2K model samples of 16 frames with UCF-101 samples, the UCF
class names as the text condition (as Video LDM), Text+Depth condition, samples at the 256 x 256 the
model is trained at. So each of `num_samples` (2048) real clips, drawn without replacement with
`seed`, gives `num_frames` (16) frames every `stride`-th, scaled and centre-cropped to `size` (256); the
model generates from its depth (the checkpoint's DPT, or `depth_dir`) and its class name
('ApplyEyeMakeup' -> 'apply eye makeup') with seed `seed + item index`; generated and real clips go
through I3D (16 frames at 224 x 224, logits). Not stated by the paper, so our choice: the frame stride
(4, the paper's training stride "assuming 30 FPS"; UCF-101 is 25 fps), which UCF split (train),
and the DDIM steps (50) and guidance (the checkpoint's default).
Nothing is downloaded: the UCF-101 videos come from a local folder or a TFDS data_dir you prepared.
"""

from __future__ import annotations

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.protocol = "ucf101"
  config.checkpoint = ""  # required: a converted checkpoint (`vidjax convert make-your-video ...`)
  config.i3d_dir = ""  # required: `vidjax convert i3d ...` output
  config.depth_dir = ""  # optional: `vidjax convert dpt ...` output; empty: the checkpoint's depth estimator
  config.real_source = "folder"  # 'folder' (ucf101_dir) or 'tfds' (tfds_data_dir)
  config.ucf101_dir = ""  # UCF-101/<ClassName>/*.avi
  config.tfds_name, config.tfds_data_dir, config.tfds_split = "ucf101", "", "train"  # prepared as array_record
  config.num_samples = 2048  # "2K model samples"
  config.num_frames, config.stride, config.size = 16, 4, 256
  config.i3d_size = 224
  config.fvd_feature = "i3d_logits"
  config.kvd_subsets, config.kvd_subset_size = 100, 1000
  config.num_inference_steps = 50
  config.guidance_scale = ml_collections.config_dict.placeholder(float)  # None: the checkpoint's default
  config.seed = 0
  config.batch_size = 8
  config.num_devices = 0
  return config
