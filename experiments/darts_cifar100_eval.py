"""DARTS evaluation on CIFAR-100: the DARTS_V2 cell trained from scratch.

Reproduces: the DARTS paper (Liu et al., ICLR 2019) reports no CIFAR-100
result; the transfer of its second-order cell with the same recipe is
reported by P-DARTS (Chen et al., ICCV 2019, Table 1) at 17.54 % test error,
3.4M parameters (100-way classifier).

Command (prepare CIFAR-100 once with ``dnas prepare cifar100``):

  dnas train --config experiments/darts_cifar100_eval.py --workdir runs/darts_c100_eval

Any other cell: add ``--genotype NAME|FILE.json`` (e.g. a search's
``genotype.json``). Settings (Sec. 3.2 and A.2): 20 cells, 36 initial
channels, 600 epochs, batch 96, SGD lr 0.025 cosine-annealed to 0, momentum
0.9, weight decay 3e-4, gradient clip 5, cutout 16, drop-path 0.2 ramped
linearly from 0, auxiliary head weight 0.4, pad-4 crop and flips, the whole
50k training set, evaluated on the 10k test set (CIFAR-100's own
normalisation statistics). Expected cost: about 1.5
GPU-days on a 1080 Ti in the reference code; see BENCHMARKS.md for ours.

Tiny variant (``--tiny``): the same recipe on the embedded digits with a
3-cell network, a few steps on a CPU.
"""

from dnas import config as config_lib


def get_config(tiny: bool = False) -> config_lib.TrainConfig:
  config = config_lib.TrainConfig(
      genotype="DARTS_V2",
      dataset="cifar100",
      init_channels=36,
      layers=20,
      auxiliary=True,
      auxiliary_weight=0.4,
      drop_path_prob=0.2,
      epochs=600,
      batch_size=96,
      lr=0.025,
      lr_min=0.0,
      lr_schedule="cosine",
      momentum=0.9,
      weight_decay=3e-4,
      grad_clip=5.0,
      label_smoothing=0.0,
      cutout=16,
      crop_padding=4,
      flip=True,
  )
  return config_lib.tiny_train(config) if tiny else config
