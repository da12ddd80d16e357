"""Tests for dnas.genotype: JSON, validation, derive, load_alphas, the zoo."""

import copy
import json
import os

import numpy as np
import pytest

from dnas import genotype
from dnas.errors import UserError
from dnas.genotype import Genotype
from dnas.ops import PRIMITIVES

# DARTS_V2, copied from quark0/darts cnn/genotypes.py (the paper's cell).
PUBLISHED_DARTS_V2 = dict(
    normal=[
        ("sep_conv_3x3", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0),
        ("sep_conv_3x3", 1), ("sep_conv_3x3", 1), ("skip_connect", 0),
        ("skip_connect", 0), ("dil_conv_3x3", 2),
    ],
    normal_concat=[2, 3, 4, 5],
    reduce=[
        ("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2),
        ("max_pool_3x3", 1), ("max_pool_3x3", 0), ("skip_connect", 2),
        ("skip_connect", 2), ("max_pool_3x3", 1),
    ],
    reduce_concat=[2, 3, 4, 5],
)


def _raises_one_line(match, fn, *args, **kwargs):
  with pytest.raises(UserError, match=match) as info:
    fn(*args, **kwargs)
  assert "\n" not in str(info.value)
  return str(info.value)


def _reference_parse(weights, primitives, steps):
  """quark0/darts cnn/model_search.py Network.genotype()._parse, verbatim logic."""
  gene = []
  n = 2
  start = 0
  for i in range(steps):
    end = start + n
    W = weights[start:end].copy()
    edges = sorted(
        range(i + 2),
        key=lambda x: -max(
            W[x][k] for k in range(len(W[x])) if k != primitives.index("none")
        ),
    )[:2]
    for j in edges:
      k_best = None
      for k in range(len(W[j])):
        if k != primitives.index("none"):
          if k_best is None or W[j][k] > W[j][k_best]:
            k_best = k
      gene.append((primitives[k_best], j))
    start = end
    n += 1
  return tuple(gene)


# --- Genotype: JSON and validation -------------------------------------------


@pytest.mark.parametrize("name", genotype.zoo_names(aliases=True))
def test_zoo_genotype_json_round_trip(name, tmp_path):
  g = genotype.from_zoo(name)
  assert genotype.from_json(g.to_json()) == g
  assert Genotype.from_dict(json.loads(json.dumps(g.to_dict()))) == g
  path = tmp_path / "g.json"
  g.save(path)
  assert genotype.load(path) == g
  assert Genotype.load(str(path)) == g


def test_darts_v2_matches_published():
  g = genotype.from_zoo("DARTS_V2")
  assert g == Genotype(**PUBLISHED_DARTS_V2)
  assert genotype.from_zoo("DARTS") == g
  assert g.steps == 4


def test_to_dict_is_darts_layout():
  d = genotype.from_zoo("DARTS_V2").to_dict()
  assert list(d) == ["normal", "normal_concat", "reduce", "reduce_concat"]
  assert d["normal"][7] == ["dil_conv_3x3", 2]
  assert d["reduce_concat"] == [2, 3, 4, 5]


@pytest.mark.parametrize(
    "name, steps, normal_concat, reduce_concat",
    [
        ("NASNet", 5, (2, 3, 4, 5, 6), (4, 5, 6)),
        ("AmoebaNet", 5, (4, 5, 6), (3, 4, 6)),
        ("ENAS", 5, (2, 3, 4, 5, 6), (2, 4, 5, 6)),
        ("PC_DARTS", 4, (2, 3, 4, 5), (2, 3, 4, 5)),
        ("PDARTS", 4, (2, 3, 4, 5), (2, 3, 4, 5)),
    ],
)
def test_zoo_shapes(name, steps, normal_concat, reduce_concat):
  g = genotype.from_zoo(name)
  assert (g.steps, g.normal_concat, g.reduce_concat) == (
      steps, normal_concat, reduce_concat,
  )


@pytest.mark.parametrize(
    "name, cell, index, edge",
    [
        ("AmoebaNet", "reduce", 8, ("conv_7x1_1x7", 0)),
        ("NASNet", "reduce", 1, ("sep_conv_7x7", 0)),
        ("PC_DARTS", "normal", 1, ("skip_connect", 0)),
        ("PCDARTS", "reduce", 3, ("sep_conv_5x5", 2)),
        ("pc-darts-imagenet", "normal", 7, ("dil_conv_5x5", 4)),
        ("P-DARTS", "normal", 7, ("dil_conv_5x5", 4)),
        ("darts_v1", "reduce", 7, ("avg_pool_3x3", 0)),
    ],
)
def test_zoo_spot_checks(name, cell, index, edge):
  assert getattr(genotype.from_zoo(name), cell)[index] == edge


def test_constructor_stores_tuples():
  g = Genotype(
      normal=[["sep_conv_3x3", 0], ["skip_connect", 1]],
      normal_concat=range(2, 3),
      reduce=[("max_pool_3x3", 0), ("max_pool_3x3", 1)],
      reduce_concat=[2],
  )
  assert g.normal == (("sep_conv_3x3", 0), ("skip_connect", 1))
  assert g.normal_concat == (2,)
  assert hash(g) == hash(g.validate())


def test_str_lists_nodes():
  text = str(genotype.from_zoo("DARTS_V2"))
  assert "normal cell: 4 nodes, output = concat(2, 3, 4, 5)" in text
  assert "  5 = skip_connect(0) + dil_conv_3x3(2)" in text


def _mutated(change):
  d = copy.deepcopy(genotype.from_zoo("DARTS_V2").to_dict())
  change(d)
  return d


def _set(path, value):
  def change(d):
    target = d
    for key in path[:-1]:
      target = target[key]
    target[path[-1]] = value
  return change


BAD_GENOTYPES = {
    "unknown_op": (
        _set(("normal", 0, 0), "conv_9x9"),
        r"unknown op 'conv_9x9'; known ops: none, .*sep_conv_7x7"),
    "input_too_large": (
        _set(("normal", 1, 1), 2),
        r"normal\[1\].*reads input 2.*node 0 may only read inputs 0\.\.1"),
    "input_negative": (_set(("reduce", 4, 1), -1), r"reduce\[4\].*reads input -1"),
    "odd_edge_count": (
        lambda d: d["normal"].pop(),
        r"normal has 7 edges; .*exactly 2 edges"),
    "node_count_mismatch": (
        lambda d: d["reduce"].extend([["skip_connect", 0]] * 2),
        r"normal has 4 nodes but reduce has 5"),
    "empty_cell": (_set(("reduce",), []), r"reduce must be a non-empty list"),
    "cell_not_list": (
        _set(("normal",), "sep_conv_3x3"),
        r"normal must be a non-empty list"),
    "edge_not_pair": (
        _set(("normal", 2), ["sep_conv_3x3"]),
        r"normal\[2\] is .*\[op_name, input_index\] pair"),
    "edge_index_float": (
        _set(("normal", 2, 1), 0.0),
        r"normal\[2\] is \('sep_conv_3x3', 0\.0\)"),
    "edge_index_bool": (_set(("normal", 2, 1), True), r"normal\[2\] is"),
    "edge_op_not_str": (_set(("reduce", 0, 0), 3), r"reduce\[0\] is \(3, 0\)"),
    "concat_out_of_range": (
        _set(("normal_concat",), [2, 3, 4, 6]),
        r"normal_concat lists state 6.*states 2\.\.5"),
    "concat_cell_input": (
        _set(("reduce_concat",), [0, 2]),
        r"reduce_concat lists state 0"),
    "concat_duplicate": (_set(("normal_concat",), [2, 3, 3]), r"lists state 3 twice"),
    "concat_empty": (
        _set(("normal_concat",), []),
        r"normal_concat must be a non-empty list"),
    "concat_not_list": (
        _set(("normal_concat",), 5),
        r"normal_concat must be a non-empty list"),
    "concat_string_item": (
        _set(("reduce_concat",), [2, "3"]),
        r"reduce_concat holds '3'"),
    "missing_key": (lambda d: d.pop("reduce_concat"), r"missing 'reduce_concat'"),
    "extra_key": (_set(("genotype",), 1), r"unknown key\(s\) 'genotype'"),
}


@pytest.mark.parametrize("case", list(BAD_GENOTYPES))
def test_bad_genotype_raises_one_line(case):
  change, match = BAD_GENOTYPES[case]
  _raises_one_line(match, Genotype.from_dict, _mutated(change))


def test_from_dict_rejects_non_object():
  _raises_one_line(r"must be a JSON object.*got list", Genotype.from_dict, [1, 2])


def test_from_json_rejects_bad_text():
  _raises_one_line(r"not valid JSON \(Expecting", genotype.from_json, "{normal:")


def test_validate_on_constructed_genotype():
  g = Genotype(**{**PUBLISHED_DARTS_V2, "normal_concat": [2, 3, 4, 5, 6]})
  _raises_one_line(r"normal_concat lists state 6", g.validate)
  _raises_one_line(r"normal_concat lists state 6", g.save, "/nonexistent/never.json")


# --- files --------------------------------------------------------------------


def test_save_is_atomic_and_creates_dirs(tmp_path):
  path = tmp_path / "runs" / "a" / "genotype.json"
  g = genotype.from_zoo("ENAS")
  g.save(path)
  g.save(path)  # overwrite in place
  assert os.listdir(path.parent) == ["genotype.json"]
  assert path.read_text().endswith("}\n")
  assert genotype.load(path) == g


def test_save_to_unwritable_place(tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("x")
  _raises_one_line(
      r"cannot write genotype file .*file/g\.json",
      genotype.from_zoo("DARTS").save, blocker / "g.json",
  )


BAD_GENOTYPE_FILES = {
    "missing": (
        None, r"genotype file '.*g\.json' does not exist; .*DARTS_V2"),
    "not_json": (
        "normal: []", r"'.*g\.json' is not valid JSON \(.* line 1 column 1\)"),
    "empty": ("", r"genotype file '.*g\.json' is not valid JSON"),
    "not_utf8": (b"\xff\xfe\x00", r"cannot read genotype file '.*g\.json'"),
    "invalid_genotype": (
        '{"normal": []}',
        r"genotype file '.*g\.json': genotype is missing 'normal_concat'"),
    "unknown_op": (
        json.dumps({**PUBLISHED_DARTS_V2, "normal": [["conv_9x9", 0]] * 8}),
        r"g\.json': normal\[0\] uses unknown op 'conv_9x9'"),
}


@pytest.mark.parametrize("case", list(BAD_GENOTYPE_FILES))
def test_load_bad_file(case, tmp_path):
  content, match = BAD_GENOTYPE_FILES[case]
  path = tmp_path / "g.json"
  if isinstance(content, bytes):
    path.write_bytes(content)
  elif content is not None:
    path.write_text(content)
  _raises_one_line(match, genotype.load, path)


def test_load_directory(tmp_path):
  _raises_one_line(r"cannot read genotype file", genotype.load, tmp_path)


# --- zoo and resolve ------------------------------------------------------------


def test_zoo_names():
  names = genotype.zoo_names()
  assert names[:5] == ["DARTS_V1", "DARTS_V2", "NASNet", "AmoebaNet", "ENAS"]
  assert {"PC_DARTS", "PDARTS"} <= set(names)
  assert {"DARTS", "PCDARTS"} <= set(genotype.zoo_names(aliases=True))


@pytest.mark.parametrize(
    "alias, name",
    [("DARTS", "DARTS_V2"), ("darts", "DARTS_V2"), ("PC-DARTS", "PC_DARTS"),
     ("PCDARTS", "PC_DARTS"), ("P-DARTS", "PDARTS"), ("nasnet", "NASNet")],
)
def test_zoo_aliases(alias, name):
  assert genotype.from_zoo(alias) == genotype.from_zoo(name)


def test_zoo_file_records_sources():
  path = os.path.join(os.path.dirname(genotype.__file__), "zoo", "genotypes.json")
  with open(path) as f:
    entries = json.load(f)["genotypes"]
  assert [e["name"] for e in entries] == genotype.zoo_names()
  assert all(e["source"] and e["paper"] for e in entries)


def test_from_zoo_unknown_lists_names():
  message = _raises_one_line(
      r"unknown zoo genotype 'DARTS_V3'", genotype.from_zoo, "DARTS_V3"
  )
  assert "DARTS_V2 (DARTS)" in message and "PDARTS" in message


def test_resolve(tmp_path):
  g = genotype.from_zoo("PDARTS")
  path = tmp_path / "mine.json"
  g.save(path)
  assert genotype.resolve("pdarts") == g
  assert genotype.resolve(path) == g
  assert genotype.resolve(str(path)) == g
  assert genotype.resolve(g) is g
  no_extension = tmp_path / "mine"
  g.save(no_extension)
  assert genotype.resolve(str(no_extension)) == g


@pytest.mark.parametrize(
    "arg, match",
    [
        ("nope", r"'nope' is neither a genotype file nor a zoo name; .*DARTS_V2"),
        ("missing/g.json", r"genotype file 'missing/g\.json' does not exist"),
        (3, r"expected a genotype file or zoo name, got 3"),
    ],
    ids=["unknown_name", "missing_json", "not_a_string"],
)
def test_resolve_errors(arg, match):
  _raises_one_line(match, genotype.resolve, arg)


# --- derive -------------------------------------------------------------------

# Columns of the hand-worked cases.
SMALL_PRIMITIVES = ["none", "max_pool_3x3", "skip_connect", "sep_conv_3x3"]


def test_derive_hand_worked():
  # steps=2: rows 0-1 feed node 0 (inputs 0, 1), rows 2-4 node 1 (inputs 0-2).
  normal = np.array([
      [5.0, 0, 0, 1],  # 'none' is the argmax; best other op: sep_conv_3x3
      [0.0, 2, 0, 0],  # max_pool_3x3, weight e^2/(e^2+3) = 0.71
      [0.0, 0, 3, 0],  # skip_connect, e^3/(e^3+3) = 0.87 ...
      [0.0, 0, 0, 0],  # all tied at 0.25: lowest non-none op, max_pool_3x3
      [0.0, 0, 0, 3],  # ... ties with row 2: the lower input (0) wins, first
  ])
  reduce = np.array([
      [0.0, 0, 0, 0],  # 0.25 -> max_pool_3x3 (tie over ops)
      [10.0, 0, 0, 0],  # 'none' dominates: others ~4.5e-5 -> max_pool_3x3
      [0.0, 5, 5, 5],  # largest raw logit, but softmax weight only 0.33
      [9.0, 1, 0, 0],  # 'none' argmax; max_pool_3x3 weight ~3e-4: dropped
      [0.0, 0, 3, 0],  # skip_connect, 0.87: strongest edge of node 1
  ])
  g = genotype.derive(normal, reduce, primitives=SMALL_PRIMITIVES)
  assert g.normal == (
      ("max_pool_3x3", 1), ("sep_conv_3x3", 0),
      ("skip_connect", 0), ("sep_conv_3x3", 2),
  )
  assert g.reduce == (
      ("max_pool_3x3", 0), ("max_pool_3x3", 1),
      ("skip_connect", 2), ("max_pool_3x3", 0),
  )
  assert g.normal_concat == g.reduce_concat == (2, 3)
  assert g.steps == 2


def test_derive_without_none():
  alphas = np.array([[1.0, 0.0], [0.0, 2.0]])  # weights 0.73 vs 0.88
  g = genotype.derive(alphas, alphas[::-1], primitives=["max_pool_3x3", "skip_connect"])
  assert g.normal == (("skip_connect", 1), ("max_pool_3x3", 0))
  assert g.reduce == (("skip_connect", 0), ("max_pool_3x3", 1))
  assert g.normal_concat == (2,)


def test_derive_all_equal_is_deterministic():
  g = genotype.derive(np.zeros((14, 8)), np.zeros((14, 8)))
  expected = tuple(("max_pool_3x3", j) for _ in range(4) for j in (0, 1))
  assert g.normal == g.reduce == expected


@pytest.mark.parametrize(
    "multiplier, concat",
    [(None, (2, 3, 4, 5)), (4, (2, 3, 4, 5)), (2, (4, 5)), (1, (5,))],
    ids=["default", "all", "two", "one"],
)
def test_derive_multiplier(multiplier, concat):
  g = genotype.derive(np.zeros((14, 8)), np.zeros((14, 8)), multiplier=multiplier)
  assert g.normal_concat == g.reduce_concat == concat


@pytest.mark.parametrize(
    "seed, steps", [(s, 4) for s in range(8)] + [(8, 2), (9, 5), (10, 6)]
)
def test_derive_random_matches_reference_and_validates(seed, steps):
  rng = np.random.default_rng(seed)
  rows = sum(2 + i for i in range(steps))
  normal = rng.normal(size=(rows, 8)) * 3
  reduce = rng.normal(size=(rows, 8)) * 3
  g = genotype.derive(normal, reduce)
  assert g.validate() is g and g.steps == steps
  softmax = lambda x: np.exp(x) / np.exp(x).sum(axis=1, keepdims=True)
  assert g.normal == _reference_parse(softmax(normal), PRIMITIVES, steps)
  assert g.reduce == _reference_parse(softmax(reduce), PRIMITIVES, steps)
  assert genotype.from_json(g.to_json()) == g


def test_derive_accepts_jax_arrays():
  import jax.numpy as jnp

  normal = jnp.zeros((14, 8)).at[:, 4].set(1.0)
  g = genotype.derive(normal, jnp.zeros((14, 8)), steps=4)
  assert {op for op, _ in g.normal} == {"sep_conv_3x3"}


def _alphas(rows=14, cols=8, fill=0.0):
  return np.full((rows, cols), fill)


BAD_DERIVE = {
    "one_dimensional": (
        dict(alphas_normal=np.zeros(8)),
        r"alphas_normal has shape \(8,\); expected \(edges, 8\)"),
    "wrong_columns": (
        dict(alphas_reduce=_alphas(cols=7)),
        r"alphas_reduce has shape \(14, 7\); expected \(edges, 8\)"),
    "wrong_rows": (
        dict(alphas_normal=_alphas(13), alphas_reduce=_alphas(13)),
        r"alphas_normal has 13 edge rows.*2, 5, 9, 14, 20"),
    "shape_mismatch": (
        dict(alphas_reduce=_alphas(20)),
        r"alphas_normal has shape \(14, 8\) but alphas_reduce has \(20, 8\)"),
    "nan": (
        dict(alphas_normal=np.where(np.eye(14, 8) > 0, np.nan, 0.0)),
        r"alphas_normal holds NaN or inf at edge 0"),
    "not_numeric": (
        dict(alphas_normal=[["a"] * 8] * 14),
        r"alphas_normal must be a numeric array"),
    "steps_mismatch": (dict(steps=5), r"14 edge rows but steps=5 needs 20"),
    "steps_zero": (dict(steps=0), r"steps must be a positive integer"),
    "multiplier_zero": (dict(multiplier=0), r"multiplier must be an integer in 1\.\.4"),
    "multiplier_too_big": (
        dict(multiplier=5),
        r"multiplier must be an integer in 1\.\.4"),
    "unknown_primitive": (
        dict(primitives=[*PRIMITIVES[:-1], "conv_9x9"]),
        r"primitives has unknown op 'conv_9x9'"),
    "primitive_twice": (
        dict(primitives=[*PRIMITIVES[:-1], "none"]),
        r"primitives lists an op twice"),
    "only_none": (
        dict(alphas_normal=_alphas(cols=1), alphas_reduce=_alphas(cols=1),
             primitives=["none"]),
        r"at least one op other than 'none'"),
    "primitives_string": (
        dict(primitives="none"),
        r"primitives must be a list of op names"),
}


@pytest.mark.parametrize("case", list(BAD_DERIVE))
def test_derive_bad_input_raises_one_line(case):
  overrides, match = BAD_DERIVE[case]
  kwargs = {"alphas_normal": _alphas(), "alphas_reduce": _alphas(), **overrides}
  _raises_one_line(match, genotype.derive, **kwargs)


def test_derive_inf_raises_one_line():
  reduce = _alphas()
  reduce[3, 2] = -np.inf
  _raises_one_line(
      r"alphas_reduce holds NaN or inf at edge 3",
      genotype.derive, _alphas(), reduce,
  )


# --- load_alphas ----------------------------------------------------------------


def test_load_alphas_round_trip(tmp_path):
  rng = np.random.default_rng(0)
  normal, reduce = rng.normal(size=(14, 8)), rng.normal(size=(14, 8))
  path = tmp_path / "alphas.npz"
  np.savez(path, normal=normal.astype(np.float32), reduce=reduce)
  got_normal, got_reduce = genotype.load_alphas(path)
  np.testing.assert_allclose(got_normal, normal.astype(np.float32))
  np.testing.assert_array_equal(got_reduce, reduce)
  assert genotype.derive(got_normal, got_reduce).steps == 4


def _write_npz(path, **arrays):
  np.savez(path, **arrays)


def _write_npy(path, array):
  with open(path, "wb") as f:
    np.save(f, array)


BAD_ALPHA_FILES = {
    "missing": (None, r"alphas file '.*a\.npz' does not exist"),
    "text_file": (
        lambda p: p.write_text("not numpy"),
        r"alphas file '.*a\.npz' is not a readable \.npz archive"),
    "empty_file": (lambda p: p.write_bytes(b""), r"is not a readable \.npz archive"),
    "npy_not_npz": (
        lambda p: _write_npy(p, np.zeros((14, 8))),
        r"holds a single array, not an \.npz archive"),
    "missing_reduce": (
        lambda p: _write_npz(p, normal=np.zeros((14, 8))),
        r"has no array 'reduce' \(it has 'normal'\)"),
    "wrong_names": (
        lambda p: _write_npz(p, alphas_normal=np.zeros((14, 8))),
        r"has no array 'normal' \(it has 'alphas_normal'\)"),
    "wrong_columns": (
        lambda p: _write_npz(p, normal=np.zeros((14, 7)), reduce=np.zeros((14, 8))),
        r"array 'normal' in '.*a\.npz' has shape \(14, 7\)"),
    "wrong_rows": (
        lambda p: _write_npz(p, normal=np.zeros((14, 8)), reduce=np.zeros((13, 8))),
        r"array 'reduce' in '.*' has 13 edge rows"),
    "shape_mismatch": (
        lambda p: _write_npz(p, normal=np.zeros((14, 8)), reduce=np.zeros((20, 8))),
        r"'normal' of shape \(14, 8\) but 'reduce' of shape \(20, 8\)"),
    "nan": (
        lambda p: _write_npz(
            p, normal=np.zeros((14, 8)), reduce=np.full((14, 8), np.nan)),
        r"array 'reduce' in '.*' holds NaN or inf at edge 0"),
    "inf": (
        lambda p: _write_npz(
            p, normal=np.where(np.eye(14, 8) > 0, np.inf, 0.0),
            reduce=np.zeros((14, 8))),
        r"array 'normal' .* holds NaN or inf"),
    "object_array": (
        lambda p: _write_npz(
            p, normal=np.array([None] * 8, dtype=object),
            reduce=np.zeros((14, 8))),
        r"cannot read array 'normal'"),
}


@pytest.mark.parametrize("case", list(BAD_ALPHA_FILES))
def test_load_alphas_bad_file(case, tmp_path):
  write, match = BAD_ALPHA_FILES[case]
  path = tmp_path / "a.npz"
  if write is not None:
    write(path)
  _raises_one_line(match, genotype.load_alphas, path)
