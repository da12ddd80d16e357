"""DARTS (first order) cell search on CIFAR-10.

Reproduces: Liu, Simonyan and Yang, "DARTS: Differentiable Architecture
Search", ICLR 2019, Table 1, "DARTS (first order) + cutout": 3.00 +/- 0.14 %
test error after retraining the found cell (3.3M parameters); search cost 1.5
GPU-days for four runs on a GTX 1080 Ti.

Command (prepare CIFAR-10 once with ``dnas prepare cifar10``):

  dnas search --config experiments/darts_cifar10_search_first_order.py \\
      --workdir runs/darts_c10_first_order

Settings (Sec. 3.1 and A.1): 8 cells of 4 nodes, 16 initial channels, 50
epochs, batch 64, the 50k training images split 25k (weights) / 25k
(alphas); weights: SGD lr 0.025 cosine-annealed to 0.001, momentum 0.9,
weight decay 3e-4, gradient clip 5; alphas: Adam lr 3e-4, betas (0.5, 0.999),
weight decay 1e-3; pad-4 random crop and horizontal flips. Expected cost:
about 0.4 GPU-day per run in the reference code on a 1080 Ti; see
BENCHMARKS.md for ours.

Tiny variant (``--tiny``): the same recipe on the embedded digits with a
2-cell supernet, a few steps on a CPU.
"""

from dnas import config as config_lib

PRIMITIVES = (
    "none",
    "max_pool_3x3",
    "avg_pool_3x3",
    "skip_connect",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "dil_conv_3x3",
    "dil_conv_5x5",
)


def get_config(tiny: bool = False) -> config_lib.SearchConfig:
  config = config_lib.SearchConfig(
      strategy="darts",
      dataset="cifar10",
      train_portion=0.5,
      init_channels=16,
      layers=8,
      steps=4,
      multiplier=4,
      stem_multiplier=3,
      primitives=PRIMITIVES,
      epochs=50,
      batch_size=64,
      w_lr=0.025,
      w_lr_min=0.001,
      w_momentum=0.9,
      w_weight_decay=3e-4,
      grad_clip=5.0,
      a_lr=3e-4,
      a_beta1=0.5,
      a_beta2=0.999,
      a_weight_decay=1e-3,
      hypergradient="first_order",
      crop_padding=4,
      flip=True,
  )
  return config_lib.tiny_search(config) if tiny else config
