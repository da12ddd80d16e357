"""Writes the notebooks from the cell sources below (run: python notebooks/_build.py).

The notebooks are thin clients of the library; keeping their sources here
makes them reviewable as code. Outputs are not stored: the test suite
executes every notebook top to bottom (tests/test_notebooks.py).
"""

import os

import nbformat

HERE = os.path.dirname(os.path.abspath(__file__))

QUICKSTART = [
    ("md", """# dnas quickstart: your own search space, searched and trained

In this notebook you will
1. write a small search space as a Flax NNX module from dnas building blocks (`Cell`, `MixedOp`, `ArchParam`),
2. search it with the DARTS bilevel optimiser on the embedded digits data (no download),
3. look at the alphas and at the cell they derive,
4. train the derived cell as a standalone network.

Everything runs on a laptop CPU in a few minutes."""),
    ("code", """import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from IPython.display import Image, display

from dnas import cell, config, data, genotype, ops, plot, supernet, train, variables
from dnas.architects import darts"""),
    ("md", """## 1. A search space is a Flax module

Weights are `nnx.Param`, alphas are `variables.ArchParam`: the optimisers split them by type.
This space has a stem, one normal cell and one reduction cell of two nodes each, over five candidate operations."""),
    ("code", """PRIMITIVES = ("none", "max_pool_3x3", "skip_connect", "sep_conv_3x3", "dil_conv_3x3")
STEPS = 2  # intermediate nodes per cell


class TinySpace(nnx.Module):
  def __init__(self, *, C=8, num_classes=10, rngs):
    n_edges = cell.num_edges(STEPS)
    key = rngs.params()
    k1, k2 = jax.random.split(key)
    self.alphas_normal = variables.ArchParam(1e-3 * jax.random.normal(k1, (n_edges, len(PRIMITIVES))))
    self.alphas_reduce = variables.ArchParam(1e-3 * jax.random.normal(k2, (n_edges, len(PRIMITIVES))))
    self.stem = ops.Sequential(ops.Conv(1, 3 * C, 3, 1, 1, rngs=rngs), ops.BatchNorm(3 * C, True, rngs=rngs))
    #             steps, multiplier, C_prev_prev, C_prev, C, reduction, reduction_prev
    self.normal = cell.Cell(STEPS, STEPS, 3 * C, 3 * C, C, False, False, PRIMITIVES, rngs=rngs)
    self.reduce = cell.Cell(STEPS, STEPS, 3 * C, STEPS * C, 2 * C, True, False, PRIMITIVES, rngs=rngs)
    self.classifier = nnx.Linear(2 * STEPS * C, num_classes, rngs=rngs)

  def __call__(self, x):
    w_normal = jax.nn.softmax(self.alphas_normal.get_value(), axis=-1)
    w_reduce = jax.nn.softmax(self.alphas_reduce.get_value(), axis=-1)
    s0 = self.stem(x)
    s1 = self.normal(s0, s0, w_normal)
    s2 = self.reduce(s0, s1, w_reduce)
    return self.classifier(jnp.mean(s2, axis=(1, 2)))


model = TinySpace(rngs=nnx.Rngs(0))
graphdef, weights, alphas, rest = supernet.split(model)
print("weights:", sum(x.size for x in jax.tree.leaves(weights)), " alphas:", sum(x.size for x in jax.tree.leaves(alphas)))"""),
    ("md", """## 2. Search it with DARTS

The DARTS architect is a pair of pure functions, `init` and `step`; one step updates the alphas on a validation batch and the weights on a training batch, and compiles to one program.
The search split is the paper's: the first half of the training set trains weights, the second half trains alphas."""),
    ("code", """train_set = data.load(None, "train")  # the embedded digits
weights_half, alphas_half = data.search_split(train_set, 0.5)
EPOCHS, BATCH = 5, 64
spe = min(len(weights_half), len(alphas_half)) // BATCH
search_config = config.SearchConfig(epochs=EPOCHS, batch_size=BATCH, hypergradient="first_order")
architect = darts.Darts(graphdef, search_config, steps_per_epoch=spe)
state = architect.init(weights, alphas, rest)
step = jax.jit(architect.step, donate_argnums=0)


def batch(split, order, i):
  idx = order[i * BATCH:(i + 1) * BATCH]
  return data.normalize(split.images[idx], train_set.mean, train_set.std), split.labels[idx]


history = []
start = time.time()
for epoch in range(EPOCHS):
  order_t = data.epoch_permutation(len(weights_half), epoch, seed=0)
  order_v = data.epoch_permutation(len(alphas_half), epoch, seed=1)
  for i in range(spe):
    state, metrics = step(state, batch(weights_half, order_t, i), batch(alphas_half, order_v, i))
  normal, reduce = (np.asarray(a) for a in architect.alphas_arrays(state))
  history.append((normal, reduce))
  print(f"epoch {epoch + 1}: train acc {float(metrics['train_acc']):.2f}, val acc {float(metrics['val_acc']):.2f} ({time.time() - start:.0f} s)")"""),
    ("md", """## 3. The alphas, and the cell they derive

`genotype.derive` applies the DARTS rule: per node, the two strongest incoming edges by their best non-`none` weight, each with its best op.
`plot.plot_alphas` draws softmax(alpha) of every edge over the epochs; `plot.plot_genotype` draws the cells as in the paper's figures."""),
    ("code", """os_dir = "runs/notebook_quickstart"
import os
os.makedirs(os_dir, exist_ok=True)
np.savez(os.path.join(os_dir, "alphas_history.npz"), epochs=np.arange(EPOCHS),
         normal=np.stack([h[0] for h in history]), reduce=np.stack([h[1] for h in history]),
         primitives=np.array(PRIMITIVES))
display(Image(plot.plot_alphas(os_dir, os.path.join(os_dir, "alphas.png"))))"""),
    ("code", """found = genotype.derive(*history[-1], primitives=PRIMITIVES, steps=STEPS, multiplier=STEPS)
print(found)
found.save(os.path.join(os_dir, "genotype.json"))
display(Image(plot.plot_genotype(found, os.path.join(os_dir, "cell.png"), title="found on digits")))"""),
    ("md", """## 4. Train the found cell

`train.run_train` builds the standalone network (`dnas.network`, which never imports search code) and trains it with the DARTS evaluation recipe; here a small network for a few epochs.
The same command line is `dnas train --genotype runs/notebook_quickstart/genotype.json --workdir ...`."""),
    ("code", """train_config = config.TrainConfig(init_channels=8, layers=3, epochs=3)
result = train.run_train(train_config, os.path.join(os_dir, "train"), found, progress=False)
print(f"test accuracy of the found cell on digits: {result.test_acc:.3f}")
assert result.test_acc > 0.3  # chance is 0.1"""),
]

REPRODUCE = [
    ("md", """# Reproducing DARTS with dnas

The DARTS paper's CIFAR-10 cell (`DARTS_V2`, second order) from the zoo: its size, its picture, a tiny training run on the embedded digits, and the commands of the full experiments."""),
    ("code", """import json
import os

from flax import nnx
from IPython.display import Image, display

from dnas import config, genotype, network, plot, summary, train

cell = genotype.from_zoo("DARTS_V2")
print(cell)
print("zoo:", ", ".join(genotype.zoo_names()))"""),
    ("md", """## Size, as in Table 1 of the paper
The paper reports 3.3M parameters on CIFAR-10 (20 cells, 36 channels, auxiliary head excluded)."""),
    ("code", """net = network.build_network(cell, "cifar10", rngs=nnx.Rngs(0))
params = summary.count_params(net)
macs = summary.count_macs(net, (1, 32, 32, 3))
print(f"parameters: {params:,}  multiply-adds: {macs / 1e6:.1f}M")
assert params == 3_349_342"""),
    ("md", """## The cells, drawn like the paper's Figures 4 and 5"""),
    ("code", """os.makedirs("runs/notebook_reproduce", exist_ok=True)
display(Image(plot.plot_genotype(cell, "runs/notebook_reproduce/darts_v2.png", title="DARTS_V2")))"""),
    ("md", """## A tiny training run
The CIFAR-10 evaluation config with its `tiny` switch: the same recipe (SGD, cosine, cutout, drop-path, auxiliary head) on the digits with a 3-cell network."""),
    ("code", """tiny = config.load_config("../experiments/darts_cifar10_eval.py", config.TrainConfig, tiny=True)
print(tiny)
result = train.run_train(tiny, "runs/notebook_reproduce/train", progress=False)
print(f"test accuracy after {tiny.epochs} tiny epochs: {result.test_acc:.3f}")"""),
    ("md", """## The full experiments
Each file in `experiments/` documents its command, the published result and its cost. On a machine with CIFAR-10 prepared (`dnas prepare cifar10`):

```bash
# search (Table 1: 2.76 +/- 0.09 % after retraining; ~1 GPU-day per run in the reference code)
dnas search --config experiments/darts_cifar10_search_second_order.py --workdir runs/c10_search
# train DARTS_V2 for 600 epochs
dnas train --config experiments/darts_cifar10_eval.py --workdir runs/c10_eval
# the whole protocol: 4 search seeds, each cell retrained, best-of-4 and mean +/- std
dnas reproduce --search-config experiments/darts_cifar10_search_second_order.py \\
    --train-config experiments/darts_cifar10_eval.py --seeds 4 --workdir runs/c10_repro
```"""),
    ("code", """for name in sorted(os.listdir("../experiments")):
  if name.endswith(".py"):
    print(name)"""),
]


def build(cells, name):
  nb = nbformat.v4.new_notebook()
  nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
  nb.cells = [
      nbformat.v4.new_markdown_cell(src) if kind == "md" else nbformat.v4.new_code_cell(src)
      for kind, src in cells
  ]
  path = os.path.join(HERE, name)
  nbformat.write(nb, path)
  return path


if __name__ == "__main__":
  print(build(QUICKSTART, "01_quickstart.ipynb"))
  print(build(REPRODUCE, "02_reproduce_darts.ipynb"))
