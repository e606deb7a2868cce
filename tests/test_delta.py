"""SparseDelta: apply/revert, compose, save/load, load errors, composable-sft import and its safe loading."""

from __future__ import annotations

import json
import pathlib
import pickle

import numpy as np
import pytest
import torch
import transformers

from raysft.errors import RaysftError
from raysft.sft.delta import SparseDelta, import_composable_sft, read_metadata
from raysft.sft.groups import ParamSpace


def make_model(hidden: int = 16, seed: int = 0):
    cfg = transformers.XLMRobertaConfig(
        vocab_size=100,
        hidden_size=hidden,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=40,
        type_vocab_size=1,
    )
    torch.manual_seed(seed)
    return transformers.XLMRobertaForSequenceClassification(cfg).eval()


@pytest.fixture
def space():
    return ParamSpace(make_model())


def full_state(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def random_mask(space, frac: float, seed: int, dense: tuple[str, ...] = ()) -> dict:
    g = torch.Generator().manual_seed(seed)
    mask = {}
    for info in space.maskable:
        if info.name in dense:
            mask[info.name] = None
            continue
        keep = torch.rand(info.numel, generator=g) < frac
        mask[info.name] = keep.nonzero().squeeze(1)  # may be empty: then the param is omitted
    return mask


def train_step(space, seed: int) -> None:
    """Stand-in for training: change every maskable and head parameter."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for info in space.maskable:
            p = space.param(info.name)
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
        for name in space.head:
            p = space.param(name)
            p.add_(torch.randn(p.shape, generator=g) * 0.1)


def make_delta(space, seed: int, frac: float = 0.1, dense: tuple[str, ...] = (), **kw) -> SparseDelta:
    """A delta trained from the model's current weights; the model is restored afterwards."""
    before = full_state(space.model)
    theta0 = space.snapshot()
    train_step(space, seed)
    delta = SparseDelta.from_params(space, theta0, random_mask(space, frac, seed, dense), meta={"kind": "task"}, **kw)
    with torch.no_grad():
        for n, p in space.model.named_parameters():
            p.copy_(before[n])
    return delta


def assert_state_equal(model, state):
    for n, p in model.named_parameters():
        assert torch.equal(p.detach(), state[n]), n


# ---------------------------------------------------------------------------------------------- apply / revert
def test_apply_changes_exactly_masked_entries_and_revert_is_bitwise(space):
    delta = make_delta(space, seed=1, dense=("encoder.layer.1.output.dense.bias",))
    assert delta.meta["k"] == str(delta.nnz()) and delta.meta["base_fingerprint"] == space.fingerprint()
    assert delta.diffs["encoder.layer.1.output.dense.bias"][0] is None
    before = full_state(space.model)
    handle = delta.apply(space)
    for info in space.maskable:
        p = space.param(info.name).detach().reshape(-1)
        b = before[f"{space.prefix}.{info.name}"].reshape(-1)
        if info.name not in delta.diffs:
            assert torch.equal(p, b), info.name
            continue
        idx, val = delta.diffs[info.name]
        touched = torch.zeros(p.numel(), dtype=torch.bool)
        touched[slice(None) if idx is None else idx] = True
        assert torch.equal(p[~touched], b[~touched]), info.name
        sel = slice(None) if idx is None else idx
        assert torch.equal(p[sel], b[sel] + val), info.name
    for name in space.model.state_dict():
        if name in space.frozen:
            assert torch.equal(space.model.state_dict()[name], before[name])
    for name in space.head:
        assert torch.equal(space.param(name).detach(), delta.abs[name])
    handle.revert()
    assert_state_equal(space.model, before)
    with pytest.raises(RuntimeError):
        handle.revert()


def test_apply_as_context_manager_and_without_abs(space):
    delta = make_delta(space, seed=2)
    before = full_state(space.model)
    with delta.apply(space, with_abs=False):
        for name in space.head:
            assert torch.equal(space.param(name).detach(), before[name])
        name = next(iter(delta.diffs))
        assert not torch.equal(space.param(name).detach(), before[f"{space.prefix}.{name}"])
    assert_state_equal(space.model, before)


def test_nested_applies_revert_exactly(space):
    a, b = make_delta(space, seed=3), make_delta(space, seed=4)
    before = full_state(space.model)
    with a.apply(space):
        with b.apply(space, with_abs=False):
            pass
    assert_state_equal(space.model, before)


def test_apply_refuses_unknown_param_before_touching_anything(space):
    delta = make_delta(space, seed=5)
    delta.diffs["encoder.layer.9.output.dense.bias"] = (torch.tensor([0]), torch.tensor([1.0]))
    before = full_state(space.model)
    with pytest.raises(RaysftError, match="encoder.layer.9.output.dense.bias"):
        delta.apply(space)
    assert_state_equal(space.model, before)


# ---------------------------------------------------------------------------------------------- compose
def test_compose_equals_sequential_application(space):
    a = make_delta(space, seed=6, frac=0.2)
    b = make_delta(space, seed=7, frac=0.2)
    b.meta["kind"] = "lang"
    c = SparseDelta.compose(a, b)
    assert (a + b).nnz() == c.nnz()
    for name, (idx, val) in c.diffs.items():
        assert idx.dtype == torch.int64 and val.numel() == idx.numel()
        assert bool((idx[1:] > idx[:-1]).all()), name
        expect = set()
        for d in (a, b):
            if name in d.diffs:
                expect |= set(d.diffs[name][0].tolist())
        assert idx.tolist() == sorted(expect)
    assert c.meta["kind"] == "task" and c.meta["k"] == str(c.nnz())
    before = full_state(space.model)
    with a.apply(space), b.apply(space):
        sequential = full_state(space.model)
    with c.apply(space):
        composed = full_state(space.model)
    assert_state_equal(space.model, before)
    for n in sequential:
        torch.testing.assert_close(composed[n], sequential[n])
    for name in space.head:  # the last delta's abs wins
        assert torch.equal(composed[name], b.abs[name])


def test_compose_dense_plus_sparse_is_dense(space):
    name = "encoder.layer.0.attention.self.query.weight"
    a = make_delta(space, seed=8, dense=(name,))
    b = make_delta(space, seed=9, frac=0.5)
    c = a + b
    idx, val = c.diffs[name]
    assert idx is None and val.numel() == space.param(name).numel()
    expect = a.diffs[name][1].clone()
    expect.index_add_(0, b.diffs[name][0], b.diffs[name][1])
    torch.testing.assert_close(val, expect)


# ---------------------------------------------------------------------------------------------- save / load
def assert_delta_equal(x: SparseDelta, y: SparseDelta):
    assert x.diffs.keys() == y.diffs.keys()
    for n in x.diffs:
        (xi, xv), (yi, yv) = x.diffs[n], y.diffs[n]
        assert (xi is None) == (yi is None), n
        if xi is not None:
            assert torch.equal(xi, yi) and yi.dtype == torch.int64, n
        assert xv.dtype == yv.dtype and torch.equal(xv, yv), n
    assert x.abs.keys() == y.abs.keys()
    for n in x.abs:
        assert torch.equal(x.abs[n], y.abs[n]), n
    assert x.meta == y.meta


def test_save_load_round_trip(space, tmp_path):
    from safetensors import safe_open

    delta = make_delta(space, seed=10, dense=("encoder.layer.1.output.dense.bias",))
    delta.meta.update(method="lt-sft", base_model="tiny", config=json.dumps({"k": 3}))
    path = tmp_path / "sub" / "task.safetensors"
    delta.save(path)
    assert sorted(p.name for p in path.parent.iterdir()) == ["task.safetensors"]  # no temp file left
    loaded = SparseDelta.load(path, space)
    assert_delta_equal(delta, loaded)
    with safe_open(str(path), framework="pt") as f:
        assert f.metadata()["format"] == "raysft.sft/2"
        keys = set(f.keys())
        for name, (idx, _) in delta.diffs.items():
            if idx is not None:  # indices encoded as gaps (uint8 here: a tiny model) or a bitmap, never int32/64
                assert (f"{name}/gap" in keys) != (f"{name}/bits" in keys) and f"{name}/idx" not in keys, name
        assert "encoder.layer.1.output.dense.bias/val" in keys
        assert not any(k.startswith("encoder.layer.1.output.dense.bias/") and not k.endswith("/val") for k in keys)
        assert "classifier.out_proj.weight/abs" in keys
    assert delta.nbytes() == sum(t.numel() * t.element_size() for t in _all_tensors(path))

    small = delta.to(torch.bfloat16)
    small.save(tmp_path / "bf16.safetensors", metadata={"note": "x"})
    back = SparseDelta.load(tmp_path / "bf16.safetensors", space)
    assert back.meta["note"] == "x"
    back.meta.pop("note")
    assert_delta_equal(small, back)
    assert all(v.dtype == torch.bfloat16 for _, v in back.diffs.values())


def _save_v1_as_before(delta: SparseDelta, path) -> None:
    """A raysft.sft/1 file written exactly as raysft wrote it before format 2 (int32 idx), not through save()."""
    from safetensors.torch import save_file

    tensors = {}
    for name, (idx, val) in delta.diffs.items():
        if idx is not None:
            tensors[f"{name}/idx"] = idx.to(torch.int32).contiguous()
        tensors[f"{name}/val"] = val.contiguous()
    for name, t in delta.abs.items():
        tensors[f"{name}/abs"] = t.contiguous()
    save_file(tensors, str(path), metadata={**delta.meta, "format": "raysft.sft/1"})


def test_format_1_files_still_load_and_apply_revert_compose_bitwise(space, tmp_path):
    task = make_delta(space, seed=20, frac=0.3, dense=("encoder.layer.1.output.dense.bias",))
    lang = make_delta(space, seed=21, frac=0.05, with_head=False)
    for d in (task, lang):
        d.meta["base_model"] = "tiny"
    _save_v1_as_before(task, tmp_path / "old.safetensors")
    task.save(tmp_path / "same_v1.safetensors", version=1)
    task.save(tmp_path / "new.safetensors")
    lang.save(tmp_path / "lang.safetensors")
    assert read_metadata(tmp_path / "same_v1.safetensors")["format"] == "raysft.sft/1"
    assert_delta_equal(task, SparseDelta.load(tmp_path / "same_v1.safetensors", space))
    old = SparseDelta.load(tmp_path / "old.safetensors", space)
    new = SparseDelta.load(tmp_path / "new.safetensors", space)
    assert_delta_equal(task, old)
    assert_delta_equal(task, new)
    assert (tmp_path / "new.safetensors").stat().st_size < (tmp_path / "old.safetensors").stat().st_size

    # apply / revert from either file give the same weights bitwise, and revert restores θ0 bitwise
    before = {p.name: space.param(p.name).detach().clone() for p in space.maskable}
    after = {}
    for d in (old, new):
        with d.apply(space):
            after[id(d)] = {n: space.param(n).detach().clone() for n in before}
        for n, t in before.items():
            assert torch.equal(space.param(n), t), n
    for n in before:
        assert torch.equal(after[id(old)][n], after[id(new)][n]), n
    # compose of loaded deltas = compose of the originals, bitwise, and survives its own round trip
    lang_back = SparseDelta.load(tmp_path / "lang.safetensors", space, check_abs=False)
    want = SparseDelta.compose(task, lang)
    got = SparseDelta.compose(old, lang_back)
    assert_delta_equal(want, got)
    got.save(tmp_path / "composed.safetensors")
    assert_delta_equal(want, SparseDelta.load(tmp_path / "composed.safetensors", space))


def test_index_encoding_round_trips_exactly_with_escapes_and_bitmaps():
    from raysft.sft.delta import decode_indices, encode_indices

    def round_trip(idx, numel=None):
        idx = torch.tensor(idx, dtype=torch.int64)
        enc = encode_indices(idx, numel)
        back = decode_indices(enc)
        assert back.dtype == torch.int64 and torch.equal(back, idx), (idx[:10], enc.keys())
        return enc

    enc = round_trip([0, 1, 2, 254, 255, 510, 766, 767])  # gaps 0,0,0,251,0,254,255 (escaped),0
    assert enc["gap"].dtype == torch.uint8 and enc["esc"].tolist() == [255]
    assert enc["gap"].tolist() == [0, 0, 0, 251, 0, 254, 255, 0]
    enc = round_trip([3, 5, 7])
    assert enc["gap"].dtype == torch.uint8 and "esc" not in enc and enc["gap"].tolist() == [3, 1, 1]
    # mostly large gaps: uint16 beats uint8 + an 8-byte escape per entry
    enc = round_trip(list(range(0, 300 * 1000, 300)))
    assert enc["gap"].dtype == torch.uint16 and "esc" not in enc
    # indices past 2**32 (int64 territory): escapes hold the big gaps exactly
    enc = round_trip([5, 2**33, 2**33 + 1, 2**40 + 7])
    assert enc["esc"].dtype == torch.int64 and len(enc["esc"]) >= 2
    # dense selections: a bitmap (1 bit per entry of the parameter) is smaller than a byte per index
    g = torch.Generator().manual_seed(0)
    dense = torch.sort(torch.randperm(10_000, generator=g)[:4000]).values.tolist()
    enc = round_trip(dense, numel=10_003)
    assert set(enc) == {"bits"} and enc["bits"].numel() == (10_003 + 7) // 8
    assert set(round_trip(dense)) == {"gap"}  # without the parameter's size: gaps
    sparse = torch.sort(torch.randperm(10_000, generator=g)[:100]).values.tolist()
    assert "gap" in round_trip(sparse, numel=10_000)
    assert set(round_trip([], numel=50)) == {"gap"}
    with pytest.raises(ValueError, match="sorted"):
        encode_indices(torch.tensor([4, 2]))


def _all_tensors(path):
    from safetensors.torch import load_file

    return load_file(str(path)).values()


def test_load_errors(space, tmp_path):
    delta = make_delta(space, seed=11)
    good = tmp_path / "good.safetensors"
    delta.save(good)
    data = good.read_bytes()

    with pytest.raises(RaysftError, match="does not exist"):
        SparseDelta.load(tmp_path / "missing.safetensors")

    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[: len(data) - 100])
    with pytest.raises(RaysftError, match="truncated") as e:
        SparseDelta.load(cut)
    assert str(cut) in str(e.value) and "\n" not in str(e.value)
    cut.write_bytes(data[:20])
    with pytest.raises(RaysftError, match="truncated"):
        SparseDelta.load(cut)

    noise = tmp_path / "noise.safetensors"
    noise.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(RaysftError, match="not a safetensors file"):
        SparseDelta.load(noise)

    from safetensors.torch import save_file

    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(3)}, str(foreign), metadata={"hello": "world"})
    with pytest.raises(RaysftError, match="not a raysft delta"):
        SparseDelta.load(foreign)

    bad = tmp_path / "unsorted.safetensors"
    name, (idx, val) = next((n, d) for n, d in delta.diffs.items() if d[1].numel() > 1)
    SparseDelta({name: (idx.flip(0), val)}, {}, delta.meta).save(bad, version=1)
    with pytest.raises(RaysftError, match="not sorted"):
        SparseDelta.load(bad)

    # format 2: an escape code without its escaped gap, or an index count that disagrees with the values
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(good))
    gap_key = next(k for k in tensors if k.endswith("/gap"))
    gap = tensors[gap_key].clone()
    gap[0] = torch.iinfo(gap.dtype).max
    broken = tmp_path / "escape.safetensors"
    save_file({**tensors, gap_key: gap}, str(broken), metadata={**delta.meta, "format": "raysft.sft/2"})
    with pytest.raises(RaysftError, match="escaped gaps") as e:
        SparseDelta.load(broken)
    assert "\n" not in str(e.value) and "export the delta again" in str(e.value)
    short = tmp_path / "short.safetensors"
    save_file({**tensors, gap_key: tensors[gap_key][:-1].clone()}, str(short), metadata={**delta.meta, "format": "raysft.sft/2"})
    with pytest.raises(RaysftError, match="encoded indices but"):
        SparseDelta.load(short)


def test_load_refuses_delta_of_another_base_naming_first_differing_tensor(space, tmp_path):
    other = ParamSpace(make_model(hidden=8))
    delta = make_delta(other, seed=12)
    delta.meta["base_model"] = "tiny-8"
    path = tmp_path / "other.safetensors"
    delta.save(path)
    SparseDelta.load(path, other)  # fine on its own model
    with pytest.raises(RaysftError) as e:
        SparseDelta.load(path, space)
    msg = str(e.value)
    assert "tiny-8" in msg and str(path) in msg
    assert "embeddings.word_embeddings.weight has shape (100, 16) here but (100, 8) in the delta" in msg
    assert "\n" not in msg


# ---------------------------------------------------------------------------------------------- composable-sft
def write_composable_sft(path, diffs: dict[str, torch.Tensor], abs_: dict[str, torch.Tensor]):
    """Write a pytorch_diff.bin the way composable-sft's encoder does: column-major flat indices, sorted, stored as
    gaps whose first element is the absolute first index (a numpy int64, the rest Python ints)."""
    enc = {}
    for name, dense in diffs.items():
        size = tuple(dense.shape)
        nz = dense.nonzero()  # (n, ndim) coordinates
        mult = np.cumprod([1] + list(size)[:-1], dtype=np.int64)
        flat = nz.numpy().astype(np.int64) @ mult
        order = np.argsort(flat, kind="stable")
        flat = flat[order]
        values = dense[tuple(nz.T)][torch.from_numpy(order)]
        steps = (flat[1:] - flat[:-1]).tolist()
        if len(flat):
            steps = [flat[0]] + steps
        enc[name] = {"size": dense.size(), "index_steps": steps, "values": values}
    torch.save({"diffs": enc, "abs": abs_}, path)


def test_import_composable_sft(space, tmp_path):
    p = space.prefix
    q = "encoder.layer.0.attention.self.query.weight"  # (16, 16)
    inter = "encoder.layer.1.intermediate.dense.weight"  # (32, 16)
    bias = "encoder.layer.0.output.dense.bias"  # (16,)
    cells = {
        q: [((0, 1), 1.5), ((1, 0), -2.0), ((15, 3), 0.25), ((3, 15), 4.0)],
        inter: [((31, 0), 0.5), ((0, 15), -0.5), ((2, 7), 3.0)],
        bias: [((0,), 1.0), ((9,), -1.0)],
    }
    dense = {}
    expected = {}
    for name, entries in cells.items():
        shape = tuple(space.param(name).shape)
        t = torch.zeros(shape)
        rows = []
        for pos, v in entries:
            t[pos] = v
            rows.append((int(np.ravel_multi_index(pos, shape)), v))  # row-major
        dense[f"{p}.{name}"] = t
        rows.sort()
        expected[name] = (torch.tensor([r for r, _ in rows]), torch.tensor([v for _, v in rows]))
    head = torch.randn(space.param("classifier.out_proj.weight").shape)
    abs_ = {"classifier.out_proj.weight": head, "lm_head.dense.weight": torch.zeros(4, 4)}
    path = tmp_path / "pytorch_diff.bin"
    write_composable_sft(path, dense, abs_)

    delta = import_composable_sft(path, space)
    assert set(delta.diffs) == set(cells)
    for name, (idx, val) in expected.items():
        got_idx, got_val = delta.diffs[name]
        assert torch.equal(got_idx, idx), name
        assert torch.equal(got_val, val), name
    assert set(delta.abs) == {"classifier.out_proj.weight"}
    assert torch.equal(delta.abs["classifier.out_proj.weight"], head)
    assert delta.meta["dropped_abs"] == "1" and delta.meta["kind"] == "task"

    before = full_state(space.model)
    with delta.apply(space):
        w = space.param(q).detach()
        assert w[3, 15] == before[f"{p}.{q}"][3, 15] + 4.0 and w[15, 3] == before[f"{p}.{q}"][15, 3] + 0.25
    assert_state_equal(space.model, before)

    bad = tmp_path / "unknown.bin"
    write_composable_sft(bad, {f"{p}.encoder.layer.7.output.dense.bias": torch.ones(16)}, {})
    with pytest.raises(RaysftError, match="encoder.layer.7.output.dense.bias"):
        import_composable_sft(bad, space)


class _Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def test_import_refuses_pickled_code_without_running_it(space, tmp_path):
    # The payload is live: plain pickle runs it.
    probe = tmp_path / "probe"
    pickle.loads(pickle.dumps(_Payload(probe)))
    assert probe.exists()

    marker = tmp_path / "marker"
    path = tmp_path / "evil.bin"
    torch.save({"diffs": {}, "abs": {}, "x": _Payload(marker)}, path)
    with pytest.raises(RaysftError, match="holds objects other than tensors") as e:
        import_composable_sft(path, space)
    assert str(path) in str(e.value) and "\n" not in str(e.value)
    assert not marker.exists()

    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(RaysftError, match="not a readable torch.save file"):
        import_composable_sft(junk, space)
    with pytest.raises(RaysftError, match="does not exist"):
        import_composable_sft(tmp_path / "none.bin", space)
