"""DARTS (second order) cell search on CIFAR-10: the paper's main result.

Reproduces: Liu, Simonyan and Yang, "DARTS: Differentiable Architecture
Search", ICLR 2019, Table 1, "DARTS (second order) + cutout": 2.76 +/- 0.09 %
test error after retraining the found cell (3.3M parameters, the DARTS_V2
cell of the zoo); search cost 4 GPU-days for four runs plus the selection on
a GTX 1080 Ti (one run: about 1 GPU-day).

Command (prepare CIFAR-10 once with ``dnas prepare cifar10``):

  dnas search --config experiments/darts_cifar10_search_second_order.py \\
      --workdir runs/darts_c10_second_order

Settings (Sec. 3.1 and A.1): 8 cells of 4 nodes, 16 initial channels, 50
epochs, batch 64, the 50k training images split 25k (weights) / 25k
(alphas); weights: SGD lr 0.025 cosine-annealed to 0.001, momentum 0.9,
weight decay 3e-4, gradient clip 5; alphas: Adam lr 3e-4, betas (0.5, 0.999),
weight decay 1e-3; the hypergradient differentiates through one virtual
weight step (eq. 6-7, xi = the current weight learning rate; dnas computes it
exactly, ``hypergradient=finite_difference`` gives the paper's eq. 8);
pad-4 random crop and horizontal flips. Expected cost: about 1 GPU-day
per run in the reference code on a 1080 Ti; see BENCHMARKS.md for ours.

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
      hypergradient="second_order",
      crop_padding=4,
      flip=True,
  )
  return config_lib.tiny_search(config) if tiny else config
