"""The PyTorch adapter: hooks record exactly what a manual forward computes."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from seis_sklearn.adapters.torch import extract_activations, find_layers  # noqa: E402

from seis_sklearn import seis_score  # noqa: E402
from tests.test_torch_moments import DEVICES  # noqa: E402
from tests.tolerance import SCORES, assert_scores_close, scorer_tolerance  # noqa: E402


class Net(torch.nn.Module):
    """Conv blocks, a module with a tuple output, a module used twice, a dict output."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(4)
        self.act = torch.nn.ReLU()  # called twice per forward
        self.conv2 = torch.nn.Conv2d(4, 3, 3, padding=1)
        self.split = Split()
        self.head = DictHead()
        self.fail_on = None

    def forward(self, x):
        if self.fail_on is not None and x.shape[0] == self.fail_on:
            raise RuntimeError("boom")
        h = self.act(self.bn(self.conv1(x)))
        h = self.act(self.conv2(h))
        a, b = self.split(h)
        return self.head(a + b)


class Split(torch.nn.Module):
    def forward(self, x):
        return x[:, :2], x[:, 1:]


class DictHead(torch.nn.Module):
    def forward(self, x):
        return {"label": "not a tensor", "logits": x.mean(dim=(2, 3))}


@pytest.fixture
def net():
    model = Net()
    model.train()
    model.bn.running_mean += 0.5  # eval-mode BN differs visibly from train mode
    return model


@pytest.fixture
def images():
    return np.random.default_rng(0).normal(size=(10, 1, 7, 7)).astype(np.float32)


def manual(model, x):
    model.eval()
    with torch.no_grad():
        x = torch.from_numpy(x)
        c1 = model.conv1(x)
        a1 = model.act(model.bn(c1))
        c2 = model.conv2(a1)
        a2 = model.act(c2)
        s = model.split(a2)
        head = model.head(s[0] + s[1])["logits"]
    return {"conv1": c1, "act#1": a1, "act#2": a2, "split": s[0], "head": head, "conv2": c2}


def test_hooks_record_what_a_manual_forward_computes(net, images):
    got = extract_activations(
        net, images, ["conv1", "act", "conv2", "split", "head"], batch_size=3, progress=False
    )
    expected = manual(net, images)
    assert list(got) == ["conv1", "act#1", "conv2", "act#2", "split", "head"]  # forward order
    for key, value in got.items():
        assert value.dtype == np.float32
        assert np.allclose(value, expected[key].numpy(), atol=1e-6), key


def test_select_picks_another_part_of_the_output(net, images):
    got = extract_activations(net, images, ["split"], select=lambda out: out[1], progress=False)
    net.eval()
    with torch.no_grad():
        h = net.act(net.conv2(net.act(net.bn(net.conv1(torch.from_numpy(images))))))
    assert np.allclose(got["split"], h[:, 1:].numpy(), atol=1e-6)


def test_mode_and_hooks_restored_after_an_error(net, images):
    net.bn.eval()  # a mixed state must come back exactly
    modes = {name: m.training for name, m in net.named_modules()}
    net.fail_on = 4  # the last batch of 10 in batches of 6
    with pytest.raises(RuntimeError, match="boom"):
        extract_activations(net, images, ["conv1", "act"], batch_size=6, progress=False)
    assert {name: m.training for name, m in net.named_modules()} == modes
    assert all(not m._forward_hooks for m in net.modules())


def test_pairs_with_a_transform(net, images):
    rot = lambda batch: torch.rot90(batch, 1, (2, 3))  # noqa: E731
    pairs = extract_activations(net, images, ["conv2"], transform=rot, progress=False)
    original, rotated = pairs["conv2"]
    assert np.allclose(original, manual(net, images)["conv2"].numpy(), atol=1e-6)
    turned = np.ascontiguousarray(np.rot90(images, 1, (2, 3)))
    assert np.allclose(rotated, manual(net, turned)["conv2"].numpy(), atol=1e-6)
    result = seis_score(original, rotated, cv=None)
    assert 0 <= result.invariance <= result.equivariance <= 1


def test_memory_mapped_output(tmp_path, net, images):
    rot = lambda batch: torch.flip(batch, (3,))  # noqa: E731
    out = tmp_path / "acts"
    pairs = extract_activations(
        net, images, ["conv1", "act"], transform=rot, out=out, batch_size=4, progress=False
    )
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(
        [f"{k}.{v}.npy" for k in ("conv1", "act#1", "act#2") for v in ("original", "transformed")]
        + ["pairs.json"]  # the saved-pairs manifest (seis_sklearn.io)
    )
    assert np.array_equal(np.load(out / "conv1.original.npy"), pairs["conv1"][0])
    net.fail_on = 2
    with pytest.raises(RuntimeError):
        extract_activations(
            net, images, ["conv1"], out=tmp_path / "failed", batch_size=4, progress=False
        )
    assert list((tmp_path / "failed").iterdir()) == []  # nothing half-written


def test_inputs_from_loaders_and_generators(net, images):
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(torch.from_numpy(images), torch.zeros(10)), batch_size=4
    )
    from_loader = extract_activations(net, loader, "conv2", progress=False)["conv2"]
    from_generator = extract_activations(
        net, (images[i : i + 3] for i in range(0, 10, 3)), "conv2", progress=False
    )["conv2"]
    expected = manual(net, images)["conv2"].numpy()
    assert np.allclose(from_loader, expected, atol=1e-6)
    assert np.allclose(from_generator, expected, atol=1e-6)


def test_layer_selection_and_errors(net, images):
    assert find_layers(net, types=torch.nn.Conv2d) == ["conv1", "conv2"]
    assert find_layers(net, pattern="^conv") == ["conv1", "conv2"]
    assert "split" in find_layers(net, leaves_only=True)
    with pytest.raises(
        ValueError, match=r"no module named 'conv3'; did you mean 'conv2', 'conv1'"
    ):
        extract_activations(net, images, ["conv3"], progress=False)
    with pytest.raises(ValueError, match="layers is empty"):
        extract_activations(net, images, [], progress=False)
    with pytest.raises(ValueError, match="batch_size must be an int >= 1"):
        extract_activations(net, images, ["conv1"], batch_size=0, progress=False)
    with pytest.raises(TypeError, match="inputs must be a tensor, a numpy array or an iterable"):
        extract_activations(net, 3.0, ["conv1"], progress=False)
    with pytest.raises(ValueError, match="out= needs the number of samples up front"):
        extract_activations(net, iter([images]), ["conv1"], out="x", progress=False)
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        extract_activations(lambda x: x, images, ["conv1"], progress=False)


def test_streaming_equals_storing_then_scoring(net):
    from seis_sklearn.adapters.torch import stream_scores

    from seis_sklearn import SEISScorer

    x = np.random.default_rng(1).normal(size=(60, 1, 7, 7)).astype(np.float32)
    flip = lambda batch: torch.flip(batch, (3,))  # noqa: E731
    streamed = stream_scores(
        net, x, ["conv1", "act"], flip, batch_size=7, progress=False, n_components=0.95
    )
    stored = extract_activations(
        net, x, ["conv1", "act"], transform=flip, progress=False, dtype=np.float64
    )
    test = np.arange(60) % 5 == 0
    assert set(streamed) == set(stored) == {"conv1", "act#1", "act#2"}
    for key, (original, flipped) in stored.items():
        scorer = SEISScorer(n_components=0.95).fit(original[~test], flipped[~test])
        expected = scorer.scores(original[test], flipped[test])
        got = streamed[key]
        assert got.evaluation == "held-out" and got.n_components == expected.n_components
        # streamed float32 activations: float32 products summed in float64
        tol = scorer_tolerance(scorer, dtype=np.float32, held_out=True)
        assert_scores_close(got, expected, tol, correlations=False)
        exact = stream_scores(
            net, x, [key.split("#")[0]], flip, batch_size=7, progress=False, n_components=0.95,
            dtype=np.float64,
        )[key]  # fmt: skip
        assert_scores_close(exact, expected, scorer_tolerance(scorer, held_out=True))
    with pytest.raises(ValueError, match=r"held_out must be a float in \(0, 0.5\]"):
        stream_scores(net, x, ["conv1"], flip, held_out=0.9)


@pytest.mark.parametrize("where", DEVICES)
def test_statistics_on_the_device_equal_the_host_path(net, monkeypatch, where):
    """The device path (torch accumulators, what a GPU runs): the numbers of the host
    path; the activations reach the accumulators as tensors on the model's device,
    never as arrays. On the CPU the path is forced (the CPU default is the numpy
    path); on CUDA, where a GPU is present, it is the default."""
    import seis_sklearn.adapters.torch as adapter
    from seis_sklearn.adapters.torch import layerwise_seis
    from seis_sklearn.adapters.torch import transforms as TT

    from seis_sklearn import _torch

    x = np.random.default_rng(4).normal(size=(80, 1, 7, 7)).astype(np.float32)
    chosen = {"rot90": TT.rot90, "flip": TT.hflip}  # sharing the original forward pass
    host = layerwise_seis(net, x, chosen, progress=False, metrics=["cka"], device="cpu")
    seen = []
    original_add = _torch.TorchAccumulator.add

    def spy(self, tensors, indices=None):
        seen.append((type(tensors[0]).__module__, tensors[0].device.type))
        return original_add(self, tensors, indices)

    if where == "cpu":
        monkeypatch.setattr(adapter, "statistics_on_device", lambda device: True)
    monkeypatch.setattr(_torch.TorchAccumulator, "add", spy)
    device = layerwise_seis(net, x, chosen, progress=False, metrics=["cka"], device=where)
    assert seen and set(seen) == {("torch", where)}
    for name in ("equivariance", "invariance", "equivariance_weighted", "cka"):
        np.testing.assert_allclose(device[name], host[name], atol=1e-4)  # float32 products
    assert (device["n_components"] == host["n_components"]).all()
    # one transform at a time on the device: the same accumulations, in the same order
    one_by_one = layerwise_seis(
        net, x, chosen, progress=False, metrics=["cka"], device=where, transforms_per_pass=1
    )
    for name in ("equivariance", "invariance", "equivariance_weighted", "cka"):
        if where == "cpu":
            assert (one_by_one[name] == device[name]).all()
        else:  # a GPU's kernels may sum in another order from one call to the next
            np.testing.assert_allclose(one_by_one[name], device[name], atol=1e-4)


@pytest.mark.parametrize("where", DEVICES)
def test_a_wide_layer_on_the_device_path_keeps_its_rows_there(monkeypatch, where):
    """The device path keeps a wide layer's rows as tensors on the model's device and
    computes their Gram matrix and V_k there (only those reach the host), with the
    scores and metrics of the host path within the float32 products' rounding."""
    import seis_sklearn.adapters.torch as adapter
    from seis_sklearn.adapters.torch import layerwise_seis

    from seis_sklearn import SEISScorer, _torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 256), torch.nn.Tanh())
    x = np.random.default_rng(2).normal(size=(60, 1, 8, 8)).astype(np.float32)
    flip = lambda batch: torch.flip(batch, (3,))  # noqa: E731
    report = lambda: layerwise_seis(  # noqa: E731
        model, x, {"flip": flip}, layers=["2"], batch_size=16, progress=False,
        metrics=["cka"], n_components=0.99, device=where,
    )  # fmt: skip
    host = report() if where == "cpu" else None
    seen = []
    for name in ("accumulate_gram", "gram_components"):
        real = getattr(_torch, name)

        def spy(tensors, *args, _real=real, _name=name, **kwargs):
            seen.append((_name, tensors[0].device.type, tuple(tensors[0].shape)))
            return _real(tensors, *args, **kwargs)

        monkeypatch.setattr(_torch, name, spy)
    if where == "cpu":
        monkeypatch.setattr(adapter, "statistics_on_device", lambda device: True)
    device = report()
    kept = (48, 256)  # 4 of every 5 samples fit the layer; 256 features
    assert seen == [("accumulate_gram", where, kept), ("gram_components", where, kept)]
    if host is None:  # CUDA: the host path runs on the CPU for the comparison
        host = layerwise_seis(
            model, x, {"flip": flip}, layers=["2"], batch_size=16, progress=False,
            metrics=["cka"], n_components=0.99, device="cpu",
        )  # fmt: skip
    stored = extract_activations(model, x, ["2"], transform=flip, progress=False, dtype=np.float64)
    test = np.arange(60) % 5 == 0
    scorer = SEISScorer(n_components=0.99).fit(stored["2"][0][~test], stored["2"][1][~test])
    tol32 = scorer_tolerance(scorer, dtype=np.float32, held_out=True)
    assert (device["n_components"] == host["n_components"]).all()
    for column in ("equivariance", "invariance", "equivariance_weighted", "cka"):
        a, b = device[column].to_numpy(), host[column].to_numpy()
        assert np.all(np.abs(a - b) <= tol32), (column, a, b, tol32)


def test_layerwise_report_schema_and_figure(net, tmp_path):
    from seis_sklearn.adapters.torch import layerwise_seis
    from seis_sklearn.adapters.torch import transforms as TT

    from seis_sklearn.report import COLUMNS, plot_layerwise, save_report

    x = np.random.default_rng(2).normal(size=(40, 1, 7, 7)).astype(np.float32)
    chosen = {"rot90": TT.rot90, "flip": TT.hflip}
    frame = layerwise_seis(
        net,
        x,
        chosen,
        layers=["conv1", "act", "conv2"],
        batch_size=16,
        progress=False,
        n_components=0.95,
    )
    assert list(frame.columns) == list(COLUMNS)
    assert len(frame) == 2 * 4  # conv1, act#1, conv2, act#2 per transform
    assert set(frame["transform"]) == {"rot90", "flip"}
    first = frame[frame["transform"] == "rot90"].sort_values("depth")
    assert first["layer"].tolist() == ["conv1", "act#1", "conv2", "act#2"]
    assert first["module"].tolist() == ["Conv2d", "ReLU", "Conv2d", "ReLU"]
    assert first["shape"].iloc[0] == "4×7×7" and set(frame["evaluation"]) == {"held-out"}
    assert ((frame["invariance"] <= frame["equivariance"]) & (frame["equivariance"] <= 1)).all()
    in_sample = layerwise_seis(net, x, {"flip": TT.hflip}, progress=False, held_out=None)
    assert in_sample["layer"].tolist() == ["conv1", "conv2"]  # default: conv and linear layers
    assert set(in_sample["evaluation"]) == {"in-sample"}
    fig = plot_layerwise(frame)
    assert len(fig.axes[0].get_lines()) == 2 * 2  # S_E and S_I per transform
    csv_path, png_path = save_report(frame, tmp_path / "report")
    assert csv_path.read_text().splitlines()[0] == ",".join(COLUMNS)
    assert png_path.read_bytes()[:4] == b"\x89PNG"


def test_report_reads_batches_from_lists_and_refuses_a_used_up_generator(net):
    """Several transforms read the inputs once each: a list of batches gives the same
    report as the array; a generator, which a second transform would find empty, is
    refused before any forward pass (one transform may still stream from it)."""
    from seis_sklearn.adapters.torch import layerwise_seis
    from seis_sklearn.adapters.torch import transforms as TT

    x = np.random.default_rng(3).normal(size=(40, 1, 7, 7)).astype(np.float32)
    chosen = {"rot90": TT.rot90, "flip": TT.hflip}
    kw = dict(layers=["conv1", "conv2"], batch_size=8, progress=False, n_components=0.95)
    from_array = layerwise_seis(net, x, chosen, **kw)
    batches = [x[i : i + 8] for i in range(0, 40, 8)]
    from_list = layerwise_seis(net, batches, chosen, **kw)
    scores = lambda frame: frame[list(SCORES)].to_numpy().tolist()  # noqa: E731
    assert scores(from_list) == scores(from_array)
    calls = []
    net.register_forward_pre_hook(lambda *_: calls.append(1))
    with pytest.raises(TypeError, match="inputs is a one-shot iterator .generator.*2 transforms"):
        layerwise_seis(net, (b for b in batches), chosen, **kw)
    assert calls == []
    one = layerwise_seis(net, (b for b in batches), {"flip": TT.hflip}, **kw)
    flipped = from_array[from_array["transform"] == "flip"].reset_index(drop=True)
    assert scores(one) == scores(flipped)


def test_transforms_share_the_original_forward_pass(net, monkeypatch):
    """A report of T transforms runs each batch once as it is and once per transform
    (T + 1 forward passes, not 2T) — streamed, grouped by ``transforms_per_pass``
    or by the memory its statistics need, and stored (``held_out=None``) — and
    every way gives the very same table as one transform at a time."""
    from seis_sklearn.adapters import _common
    from seis_sklearn.adapters.torch import layerwise_seis
    from seis_sklearn.adapters.torch import transforms as TT

    x = np.random.default_rng(4).normal(size=(40, 1, 7, 7)).astype(np.float32)
    chosen = {"rot90": TT.rot90, "flip": TT.hflip, "vflip": TT.vflip}
    kw = dict(layers=["conv1", "conv2", "head"], batch_size=8, progress=False,
              metrics=["cka", "channel_eed"])  # fmt: skip
    calls = []
    net.register_forward_pre_hook(lambda module, args: calls.append(args[0].shape[0]))

    def report(**options):
        calls.clear()
        frame = layerwise_seis(net, x, chosen, **kw, **options)
        return frame, calls.count(8) // 5  # forward passes per batch of 8 (5 batches)

    alone, passes = report(transforms_per_pass=1)
    assert passes == 6  # 2T
    assert alone["channel_eed"].notna().sum() == 6  # conv1 and conv2 (head: no spatial axes)
    assert sorted(alone["transform"]) == sorted(t for t in chosen for _ in range(3))
    shared, passes = report()  # "auto": these statistics are far below 2 GiB
    assert passes == 4 and calls.count(2) == 1  # T + 1, and two samples sized the pass
    assert shared.equals(alone)
    grouped, passes = report(transforms_per_pass=2)
    assert passes == 5 and grouped.equals(alone)  # (rot90, flip) then (vflip,)
    # "auto" groups by the statistics one transform holds: a budget of exactly two
    # transforms' worth gives groups of two, one byte less groups of one
    probe = extract_activations(net, x[:2], kw["layers"], progress=False)
    shapes = {k: (a.shape[1:], 4) for k, a in probe.items()}
    params = {"matricization": "auto"}
    each = sum(_common.statistics_bytes(s, i, 40, params) for s, i in shapes.values())
    for budget, expected in ((2 * each, 5), (2 * each - 1, 6)):
        monkeypatch.setattr(_common, "AUTO_PASS_BYTES", budget)
        frame, passes = report()
        assert passes == expected and frame.equals(alone)
    # stored activations: the original ones once, each transform's beside them
    stored_alone = pd_concat(
        layerwise_seis(net, x, {name: chosen[name]}, **kw, held_out=None)
        for name in sorted(chosen)
    )
    calls.clear()
    stored = layerwise_seis(net, x, chosen, **kw, held_out=None)
    assert calls.count(8) // 5 == 4
    assert stored.equals(stored_alone)
    for bad in (0, -1, True, 1.5, "all", None):
        with pytest.raises(ValueError, match="transforms_per_pass must be 'auto' or an int >= 1"):
            layerwise_seis(net, x, chosen, **kw, transforms_per_pass=bad)
    # a batch of several transformed views comes in parts: never more than two views alive
    from seis_sklearn.adapters.torch import _forward_batches

    views = {"original": None, "a": TT.rot90, "b": TT.hflip}
    batches = _forward_batches(net, x, ["conv1"], views, 8, None, None, False, True)
    assert next(batches) == 40
    parts = [(rows, sorted(per_view)) for rows, per_view in batches]
    assert len(parts) == 10
    assert parts[:2] == [((0, 8), ["a", "original"]), ((0, 8), ["b", "original"])]


def pd_concat(frames):
    import pandas as pd

    return pd.concat(list(frames), ignore_index=True)


def test_layerwise_report_adds_metrics_and_statistics_columns(net):
    from seis_sklearn.adapters.torch import layerwise_seis
    from seis_sklearn.adapters.torch import transforms as TT

    from seis_sklearn.metrics import _cca_reduced, _moments_of, linear_cka, pwcca, svcca

    x = np.random.default_rng(3).normal(size=(48, 1, 7, 7)).astype(np.float32)
    flip = {"flip": TT.hflip}
    pairs = extract_activations(net, x, ["conv1", "conv2"], transform=TT.hflip, progress=False)
    for held_out in (0.25, None):  # streamed and stored: the metrics use all samples
        frame = layerwise_seis(
            net, x, flip, layers=["conv1", "conv2"], held_out=held_out, progress=False,
            metrics=["cka", "svcca", "pwcca"],
        )  # fmt: skip
        for _, row in frame.iterrows():
            # the report's own arithmetic: streamed batches in float64, stored ones float32
            dtype = np.float64 if held_out else np.float32
            a, b = (v.astype(dtype) for v in pairs[row["layer"]])
            # the standard CKA of the flattened activations (one batch of all 48 samples)
            assert row["cka"] == pytest.approx(linear_cka(a, b), rel=1e-6)
            assert row["svcca"] == pytest.approx(svcca(a, b, matricization="spatial"), rel=1e-6)
            # PWCCA's weights depend on the basis chosen within tied canonical correlations
            # (conv1 has seven at 1.0 under the flip): it is only defined, and compared,
            # where the correlations stand apart (measured: moved by 2.6e-3 by another BLAS
            # kernel on conv1; a tolerance cannot follow from a quantity that is undefined).
            # Elsewhere the same arithmetic in another order: u·√m / gap ≪ 1e-6.
            rho = _cca_reduced(_moments_of(a, b, "NCHW", "spatial"), 1.0, 1.0)[0]
            if np.diff(rho).size == 0 or np.abs(np.diff(rho)).min() > 1e-3:
                assert row["pwcca"] == pytest.approx(
                    pwcca(a, b, matricization="spatial"), rel=1e-6
                )
    stats = layerwise_seis(
        net, x, flip, layers=["conv2"], held_out=None, progress=False, n_permutations=9,
        n_bootstrap=9, random_state=0,
    )  # fmt: skip
    want = seis_score(*pairs["conv2"], n_permutations=9, n_bootstrap=9, random_state=0, cv=None)
    assert stats["equivariance_p"].iloc[0] == want.p_values["equivariance"]
    assert stats["equivariance_ci_low"].iloc[0] == want.ci_low["equivariance"]
    with pytest.raises(ValueError, match="n_permutations refits on stored activations"):
        layerwise_seis(net, x, flip, layers=["conv2"], progress=False, n_permutations=9)
    with pytest.raises(ValueError, match="metrics: unknown metric 'geed'"):
        layerwise_seis(net, x, flip, progress=False, metrics=["geed"])


def test_channel_eed_column_equals_the_metric(net):
    from seis_sklearn.adapters.torch import layerwise_seis
    from seis_sklearn.adapters.torch import transforms as TT

    from seis_sklearn import transforms
    from seis_sklearn.metrics import channelwise_geed

    x = np.random.default_rng(4).normal(size=(32, 1, 7, 7)).astype(np.float32)
    rot = {"rot90": TT.rot90}
    pairs = extract_activations(net, x, ["conv1", "conv2"], transform=TT.rot90, progress=False)
    for held_out in (0.25, None):
        frame = layerwise_seis(
            net, x, rot, layers=["conv1", "conv2", "head"], held_out=held_out, progress=False,
            metrics=["channel_eed"],
        )  # fmt: skip
        by_layer = dict(zip(frame["layer"], frame["channel_eed"], strict=True))
        for layer in ("conv1", "conv2"):
            a, b = pairs[layer]
            # the G-EED summand of g = rot90: the orbit {f(x), f(gx)} averages it with −1
            term = 2 * channelwise_geed([a, b], [None, transforms.rot90]) + 1
            assert by_layer[layer] == pytest.approx(term, abs=1e-6)
        assert np.isnan(by_layer["head"])  # a Linear layer has no maps to rotate


class _TinyViT(torch.nn.Module):
    """Patch embedding + a class token + a pointwise block, like timm's ViTs (N, L, D)."""

    num_prefix_tokens = 1

    def __init__(self):
        super().__init__()
        # patches averaged, then embedded: rotating the input permutes the patch tokens
        self.embed = torch.nn.Sequential(torch.nn.AvgPool2d(2), torch.nn.Conv2d(1, 8, 1))
        self.cls = torch.nn.Parameter(torch.randn(1, 1, 8))
        self.block = torch.nn.Linear(8, 8)  # per token: commutes with any token permutation

    def forward(self, x):
        tokens = self.embed(x).flatten(2).transpose(1, 2)  # (N, 16, 8) for 8×8 inputs
        cls = self.cls + torch.tanh(tokens[:, :1].detach() * 3)  # not a patch of the grid
        return self.block(torch.cat([cls, tokens], dim=1))


def test_report_auto_matricization_tokens_and_degenerate_rows(tmp_path):
    from seis_sklearn.adapters.torch import layerwise_seis
    from seis_sklearn.adapters.torch import transforms as TT

    from seis_sklearn.report import plot_layerwise

    torch.manual_seed(0)
    small = torch.nn.Sequential(
        torch.nn.Conv2d(1, 6, 3, padding=1), torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten()
    ).eval()
    x = np.random.default_rng(0).normal(size=(120, 1, 8, 8)).astype(np.float32)
    frame = layerwise_seis(
        small, x, {"rot90": TT.rot90}, layers=["0", "1"], progress=False, n_components=0.9
    )
    rows = frame.set_index("layer")
    assert rows.loc["0", "matricization"] == "spatial"
    assert rows.loc["0", "matricization_choice"] == "auto: 8×8 map"
    assert rows.loc["1", "matricization"] == "flatten"  # a 2×2 map: spatial would see 4 columns
    assert rows.loc["1", "matricization_choice"] == "auto: 2×2 map is too small for spatial"
    forced = layerwise_seis(
        small, x, {"rot90": TT.rot90}, layers=["1"], progress=False, matricization="spatial"
    )
    assert forced["degenerate"].all() and "only d=4 columns" in forced["degenerate_reason"][0]
    assert forced["matricization_choice"][0] == "given"
    fig = plot_layerwise(forced)
    assert any(line.get_marker() == "x" for line in fig.axes[0].get_lines())  # marked

    vit = _TinyViT().eval()
    # the class token sits outside the patch grid: "patch" (num_prefix_tokens) drops it
    patch = layerwise_seis(
        vit, x, {"rot90": TT.rot90}, layers=["block"], progress=False, tokens="patch"
    )
    every = layerwise_seis(
        vit, x, {"rot90": TT.rot90}, layers=["block"], progress=False, tokens="all"
    )
    # the default ("auto") reads the prefix the model declares, as "patch" does
    auto = layerwise_seis(vit, x, {"rot90": TT.rot90}, layers=["block"], progress=False)
    assert auto["equivariance"][0] == patch["equivariance"][0]
    assert patch["shape"][0] == "16×8" and every["shape"][0] == "17×8"
    assert patch["equivariance"][0] == pytest.approx(1.0, abs=1e-4)  # a permutation of tokens
    assert every["equivariance"][0] < patch["equivariance"][0] - 0.01  # the class token moves
    with pytest.raises(ValueError, match="tokens must be 'auto', 'all' or 'patch'"):
        layerwise_seis(vit, x, {"r": TT.rot90}, layers=["block"], tokens="cls", progress=False)
    # the prefix is found per layer: a model that does not say it still works …
    vit.num_prefix_tokens = None
    found = layerwise_seis(
        vit, x, {"rot90": TT.rot90}, layers=["block"], progress=False, tokens="patch"
    )
    assert found["shape"][0] == "16×8" and "1 prefix token" in found["layout_choice"][0]
    assert found["equivariance"][0] == patch["equivariance"][0]
    # … and tokens that tile no grid of the input (a sequence model) need the count
    sequence = torch.nn.Linear(4, 8).eval()
    tokens = np.random.default_rng(1).normal(size=(40, 10, 4)).astype(np.float32)
    with pytest.raises(ValueError, match=r"layer '0': .*10 tokens leave no grid.*n_prefix="):
        layerwise_seis(
            torch.nn.Sequential(sequence), tokens, {"r": lambda b: b.flip(1)}, layers=["0"],
            tokens="patch", progress=False,
        )  # fmt: skip


def test_a_wide_streamed_layer_is_fitted_on_its_rows(monkeypatch):
    """Few samples of a wide layer: the stream keeps their rows (smaller than the d × d
    moments) and fits them as stored activations are fitted — here by the Gram solver,
    the cheaper one — with the scores and metrics of the moment path (forced by a
    zero row budget) within the case's rounding bound."""
    import functools

    from seis_sklearn.adapters.torch import layerwise_seis, stream_scores

    import seis_sklearn._accumulate as accumulate_module
    import seis_sklearn._fit as scorer_module
    from seis_sklearn import SEISScorer

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 256), torch.nn.Tanh())
    x = np.random.default_rng(2).normal(size=(60, 1, 8, 8)).astype(np.float32)
    flip = lambda batch: torch.flip(batch, (3,))  # noqa: E731
    params = dict(batch_size=16, progress=False, n_components=0.99, dtype=np.float64)
    gram_calls = []
    real_gram = scorer_module.accumulate_gram

    def counted_gram(*args, **kwargs):
        gram_calls.append(1)
        return real_gram(*args, **kwargs)

    monkeypatch.setattr(scorer_module, "accumulate_gram", counted_gram)
    from_rows = stream_scores(model, x, ["2"], flip, **params)["2"]
    assert gram_calls  # rows kept, and the Gram solver chosen for 48 rows of 256 columns
    report = lambda: layerwise_seis(  # noqa: E731
        model, x, {"flip": flip}, layers=["2"], batch_size=16, progress=False,
        metrics=["cka", "svcca"], n_components=0.99,
    )  # fmt: skip
    rows_report = report()

    monkeypatch.setattr(
        accumulate_module, "RowsFirst", functools.partial(accumulate_module.RowsFirst, budget=0)
    )
    gram_calls.clear()
    from_moments = stream_scores(model, x, ["2"], flip, **params)["2"]
    assert not gram_calls
    moments_report = report()

    stored = extract_activations(model, x, ["2"], transform=flip, progress=False, dtype=np.float64)
    original, flipped = stored["2"]
    test = np.arange(60) % 5 == 0
    scorer = SEISScorer(n_components=0.99).fit(original[~test], flipped[~test])
    tol = scorer_tolerance(scorer, held_out=True)
    assert from_rows.n_components == from_moments.n_components == scorer.n_components_
    assert_scores_close(from_rows, from_moments, tol)
    assert_scores_close(from_rows, scorer.scores(original[test], flipped[test]), tol)
    # the reports stream float32 activations: float32 products, by two routes
    tol32 = scorer_tolerance(scorer, dtype=np.float32, held_out=True)
    for column in ("equivariance", "invariance", "cka", "svcca"):
        a, b = rows_report[column].to_numpy(), moments_report[column].to_numpy()
        assert np.all(np.abs(a - b) <= tol32), (column, a, b, tol32)


def test_debiased_cka_and_lie_derivative_columns(net):
    """``cka_debiased``: the standard CKA of the flattened activations — stored, over
    all samples; streamed, the minibatch estimator over the report's batches (16, 16
    and 8 samples here); ``lee``: each layer's share of the output's Lie
    derivative under the transform's generator (rotation for rot90 and rotate, the
    translation of its axis for translate, none for a flip)."""
    import functools

    from seis_sklearn.adapters.torch import layerwise_lie_derivative, layerwise_seis
    from seis_sklearn.adapters.torch import transforms as TT

    from seis_sklearn.metrics import MinibatchCKA, linear_cka

    x = np.random.default_rng(5).normal(size=(40, 1, 7, 7)).astype(np.float32)
    chosen = {"rot90": TT.rot90, "flip": TT.hflip,
              "shift": functools.partial(TT.translate, shift=(1.0, 0.0))}  # fmt: skip
    layers = ["conv1", "conv2", "head"]
    lee = layerwise_lie_derivative(net, x, ["rotate", "translate_y"], layers=layers,
                                   progress=False)  # fmt: skip
    for held_out in (0.25, None):
        frame = layerwise_seis(net, x, chosen, layers=layers, held_out=held_out, batch_size=16,
                               progress=False, metrics=["cka_debiased", "lee"])  # fmt: skip
        for name, transform in chosen.items():
            pairs = extract_activations(net, x, layers, transform=transform, progress=False)
            rows = frame[frame["transform"] == name].set_index("layer")
            for layer in layers:
                a, b = pairs[layer]
                if held_out is None:
                    want = linear_cka(a, b, debiased=True)
                else:
                    sums = MinibatchCKA()
                    for start in range(0, len(a), 16):
                        sums.add(a[start : start + 16], b[start : start + 16])
                    want = sums.value(debiased=True)
                assert rows.loc[layer, "cka_debiased"] == pytest.approx(want, abs=1e-6)
            generator = {"rot90": "rotate", "flip": "", "shift": "translate_y"}[name]
            assert (rows["lee_generator"] == generator).all()
            if generator:
                assert np.allclose(rows["lee"].to_numpy(), lee.loc[layers, generator], rtol=1e-5)
            else:
                assert rows["lee"].isna().all()
    with pytest.raises(TypeError, match="one-shot iterator .* the 'lee' column"):
        layerwise_seis(net, iter([torch.from_numpy(x)]), {"rot90": TT.rot90}, progress=False,
                       metrics=["lee"])  # fmt: skip
    from seis_sklearn.metrics import check_report_metrics

    with pytest.raises(ValueError, match="'lee' .* needs the model itself"):
        check_report_metrics(["lee"])


def test_plot_measures_draws_every_measure_of_a_report(net):
    """One panel per measure the report carries, one line per transform, the values
    of the table; a measure it lacks is named in the error."""
    from seis_sklearn.adapters.torch import layerwise_seis
    from seis_sklearn.adapters.torch import transforms as TT

    from seis_sklearn.report import plot_measures

    x = np.random.default_rng(6).normal(size=(24, 1, 7, 7)).astype(np.float32)
    frame = layerwise_seis(net, x, {"rot90": TT.rot90, "flip": TT.hflip},
                           layers=["conv1", "conv2", "head"], progress=False,
                           metrics=["cka_debiased", "lee"])  # fmt: skip
    fig = plot_measures(frame)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["SEIS S_E", "SEIS S_I", "debiased CKA", "LEE share"]
    lines = {line.get_label(): line for line in fig.axes[2].get_lines()}
    assert set(lines) == {"rot90", "flip"}
    want = frame[frame["transform"] == "rot90"].sort_values("depth")["cka_debiased"]
    assert np.allclose(lines["rot90"].get_ydata(), want.to_numpy(float))
    with pytest.raises(ValueError, match="no column 'pwcca'"):
        plot_measures(frame, ["pwcca"])
