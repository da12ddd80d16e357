"""ENAS micro (cell) search on CIFAR-10, over the DARTS node structure.

Reproduces the setting of Pham, Guan, Zoph, Le and Dean, "Efficient Neural
Architecture Search via Parameter Sharing", ICML 2018, micro search space:
2.89 % test error after retraining the found cell (4.6M parameters), search
cost 0.45 GPU-days on a GTX 1080 Ti.

Command (prepare CIFAR-10 once with ``dnas prepare cifar10``):

  dnas search --config experiments/enas_cifar10_search.py --workdir runs/enas_c10

Settings from the ENAS micro-search script: 150 epochs, batch 160, ENAS's
five ops (3x3 and 5x5 separable convolutions, 3x3 average and max pooling,
identity), 20 initial channels; shared weights: SGD lr 0.05 cosine to 0.0005,
momentum 0.9, weight decay 1e-4, gradient clip 5; controller: LSTM 64,
Adam lr 0.0035, tanh constant 1.10 (ops: 1.10 / 2.5), temperature 5.0,
entropy weight 1e-4, baseline decay 0.99, 30 controller steps per epoch
of 10 samples each.
Differences, stated: the cell has the DARTS structure (4 nodes, output =
all 4 nodes concatenated, 8 cells) rather than ENAS's 5 nodes with
loose-end outputs, and the child's cosine schedule has no warm restarts.
Expected cost: about 0.5 GPU-day in the reference code; see BENCHMARKS.md
for ours. The genotype is written as DARTS's, so
``dnas train --genotype runs/enas_c10/genotype.json`` retrains it.

Tiny variant (``--tiny``): the same recipe on the embedded digits with a
2-cell supernet, a few steps on a CPU.
"""

from dnas import config as config_lib


def get_config(tiny: bool = False) -> config_lib.SearchConfig:
  config = config_lib.SearchConfig(
      strategy="enas",
      dataset="cifar10",
      train_portion=0.5,
      init_channels=20,
      layers=8,
      steps=4,
      multiplier=4,
      primitives=("max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3", "sep_conv_5x5"),
      epochs=150,
      batch_size=160,
      w_lr=0.05,
      w_lr_min=0.0005,
      w_momentum=0.9,
      w_weight_decay=1e-4,
      grad_clip=5.0,
      enas_lstm_size=64,
      enas_lr=3.5e-3,
      enas_baseline_decay=0.99,
      enas_entropy_weight=1e-4,
      enas_tanh_constant=1.1,
      enas_temperature=5.0,
      enas_controller_steps=30,
      enas_num_aggregate=10,
      enas_derive_samples=100,
      crop_padding=4,
      flip=True,
  )
  if not tiny:
    return config
  small = config_lib.tiny_search(config)
  return config_lib.apply_overrides(small, {"enas_controller_steps": 10, "enas_derive_samples": 8})
