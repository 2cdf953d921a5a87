"""Issue 38: what the command line says — its own flags, one line per problem, each
warning once — and inputs with NaN or infinite values refused before the pass."""

import json
import textwrap
import warnings
from functools import partial

import numpy as np
import pytest

from seis_sklearn import seis_score
from seis_sklearn.cli import _cli_text, main

torch = pytest.importorskip("torch")

from seis_sklearn.adapters import torch as TA  # noqa: E402
from seis_sklearn.adapters.torch import transforms as TT  # noqa: E402

NET = textwrap.dedent(
    """
    import torch

    def build():
        torch.manual_seed(0)
        return torch.nn.Sequential(
            torch.nn.Conv2d(3, 6, 3, padding=1), torch.nn.ReLU(),
            torch.nn.Conv2d(6, 6, 3, padding=1), torch.nn.ReLU(),
        )
    """
)


def _build():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 6, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(6, 6, 3, padding=1), torch.nn.ReLU(),
    )  # fmt: skip


@pytest.fixture
def model_files(tmp_path, rng):
    (tmp_path / "net.py").write_text(NET)
    x = rng.normal(size=(40, 3, 8, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    return tmp_path, x


def _report(folder, inputs, *more):
    return main(["report", "--model", f"{folder / 'net.py'}:build", "--inputs", str(inputs),
                 "--transform", "rot90", "--out", str(folder / "out"), "-q", *more])  # fmt: skip


# ----------------------------------------------------------------- item 10: NaN inputs


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_cli_refuses_non_finite_inputs_before_the_pass(model_files, bad, capsys):
    folder, x = model_files
    x = x.copy()
    x[7, 1, 2, 3] = bad
    x[30, 0, 0, 0] = bad
    np.save(folder / "bad.npy", x)
    assert _report(folder, folder / "bad.npy") == 1
    err = capsys.readouterr().err
    (line,) = err.strip().splitlines()
    kind = "NaN" if np.isnan(bad) else "infinite"
    assert line.startswith(
        f"seis report: error: --inputs {folder / 'bad.npy'}: holds 2 non-finite"
    )
    assert f"2 {kind}" in line and "in 2 of the 40 samples (the first: sample 7)" in line
    assert not (folder / "out").exists()  # nothing half-written


def test_layerwise_seis_refuses_non_finite_arrays_and_tensors(rng):
    x = rng.normal(size=(40, 3, 8, 8)).astype(np.float32)
    x[3, 0, 1, 1] = np.nan
    x[3, 0, 1, 2] = np.inf
    x[11, 2, 0, 0] = np.nan
    transforms = {"rot90": partial(TT.rot90, k=1)}
    for inputs in (x, torch.from_numpy(x)):
        with pytest.raises(
            ValueError,
            match=r"^inputs: holds 3 non-finite value\(s\) \(2 NaN, "
            r"1 infinite\) in 2 of the 40 samples \(the first: sample 3\)",
        ):
            TA.layerwise_seis(_build(), inputs, transforms, progress=False)
    for call in (TA.stream_scores, TA.extract_activations):
        with pytest.raises(ValueError, match="^inputs: holds 3 non-finite"):
            call(_build(), x, ["0"], transform=partial(TT.rot90, k=1), progress=False)


def test_a_loaders_non_finite_batch_stops_the_report_with_nothing_written(rng):
    x = torch.from_numpy(rng.normal(size=(40, 3, 8, 8)).astype(np.float32))
    batches = [x[i : i + 8].clone() for i in range(0, 40, 8)]
    batches[3][5, 0, 0, 0] = float("inf")
    written = []
    transforms = {"rot90": partial(TT.rot90, k=1), "hflip": TT.hflip}
    with pytest.raises(
        ValueError,
        match=r"^inputs: batch 3 \(samples 24–31\) holds 1 "
        r"non-finite .* in 1 of its 8 samples \(the first: sample 29\)",
    ):
        TA.layerwise_seis(_build(), batches, transforms, progress=False, on_rows=written.append)
    assert written == []  # no rows of NaN scores reached the caller
    batches[3][5, 0, 0, 0] = 0.0
    frame = TA.layerwise_seis(_build(), batches, transforms, progress=False)
    assert np.isfinite(frame["equivariance"]).all()


def test_onnx_layerwise_report_refuses_non_finite_inputs(rng):
    pytest.importorskip("onnxruntime")
    from seis_sklearn.adapters import onnx as OA

    from tests.test_adapters_onnx import Residual, export

    proto = export(Residual().eval(), torch.zeros(2, 1, 9, 9))
    x = rng.normal(size=(30, 1, 9, 9)).astype(np.float32)
    x[12, 0, 4, 4] = np.nan
    from seis_sklearn import transforms as T

    with pytest.raises(
        ValueError, match=r"^inputs: holds 1 non-finite .* \(the first: sample 12\)"
    ):
        OA.layerwise_seis(proto, x, {"rot90": T.rot90}, progress=False)
    with pytest.raises(ValueError, match=r"^inputs\['images'\]: holds 1 non-finite"):
        OA.layerwise_seis(proto, {"images": x}, {"rot90": T.rot90}, progress=False)


# ------------------------------------------------------- items 5 and 11: said once, as seis


def test_the_uint8_cast_is_said_once_and_blames_the_caller(rng):
    x = rng.integers(0, 255, size=(40, 3, 8, 8)).astype(np.uint8)
    transforms = {"rot90": partial(TT.rot90, k=1), "hflip": TT.hflip}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        TA.layerwise_seis(_build(), x, transforms, progress=False, transforms_per_pass=1)
    cast = [w for w in caught if "inputs are uint8" in str(w.message)]
    assert len(cast) == 1 and cast[0].filename == __file__


def test_cli_warnings_are_one_line_each_and_said_once(model_files, rng, capsys):
    folder, _ = model_files
    np.save(folder / "u8.npy", rng.integers(0, 255, size=(40, 3, 8, 8)).astype(np.uint8))
    before = warnings.showwarning
    with warnings.catch_warnings():
        warnings.simplefilter("always")  # as a user with -W always: still once
        assert _report(folder, folder / "u8.npy", "--transform", "hflip") == 0
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "uint8" in line]
    assert lines == [
        "seis report: warning: inputs are uint8: cast to the model's float32 as they are (no "
        "rescaling; scale them as the model expects, e.g. images / 255)"
    ]
    assert "UserWarning" not in err and "warnings.warn" not in err and ".py:" not in err
    assert warnings.showwarning is before  # the hook is the command line's only


def test_torchscript_deprecations_are_silenced_and_nothing_else(tmp_path, capsys):
    from seis_sklearn.adapters.torch._script import script_copy, torchscript_deprecations

    scripted = torch.jit.script(_build())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        script_copy(scripted, torch)
        with torchscript_deprecations():
            for category in (DeprecationWarning, FutureWarning):  # torch 2.13; 2.14
                warnings.warn_explicit("`torch.jit.load` is deprecated. Please switch to "
                                       "`torch.export`.", category, "_serialization.py", 170,
                                       module="torch.jit._serialization")  # fmt: skip
            warnings.warn_explicit("`torch.jit.script` is not supported in Python 3.14+ and "
                                   "may break.", FutureWarning, "_script.py", 1485,
                                   module="torch.jit._script")  # fmt: skip
            warnings.warn("an unrelated deprecation", DeprecationWarning, stacklevel=2)
            warnings.warn_explicit("`torch.jit.load` is deprecated", FutureWarning, "other.py",
                                   1, module="someone_else")  # fmt: skip
    assert [str(w.message) for w in caught] == [
        "an unrelated deprecation",
        "`torch.jit.load` is deprecated",
    ]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.jit.save(scripted, tmp_path / "m.pt")
    assert any("deprecated" in str(w.message) for w in caught), "torch no longer warns here"
    np.save(tmp_path / "x.npy", np.zeros((20, 3, 8, 8), np.float32))
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        status = main(["report", "--torchscript", str(tmp_path / "m.pt"), "--inputs",
                       str(tmp_path / "x.npy"), "--transform", "rot90", "--out",
                       str(tmp_path / "out"), "-q"])  # fmt: skip
    assert status == 0
    assert "deprecat" not in capsys.readouterr().err.lower()


@pytest.mark.parametrize("kind", ["text", "npy", "pickle", "zip", "empty", "folder", "script"])
def test_a_bad_exported_file_is_one_line(tmp_path, kind, capfd):
    import pickle
    import zipfile

    path = tmp_path / f"model.{kind}"
    if kind == "text":
        path.write_text("not a model\n")
    elif kind == "npy":
        np.save(path, np.zeros(3))  # model.npy
    elif kind == "pickle":
        path.write_bytes(pickle.dumps({"weights": [1, 2]}))
    elif kind == "zip":
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("readme.txt", "hello")
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "folder":
        path.mkdir()
    else:
        torch.jit.save(torch.jit.script(_build()), path)
    np.save(tmp_path / "x.npy", np.zeros((20, 3, 8, 8), np.float32))
    status = main(["report", "--exported", str(path), "--inputs", str(tmp_path / "x.npy"),
                   "--transform", "rot90", "--out", str(tmp_path / "out")])  # fmt: skip
    assert status == 1
    out, err = capfd.readouterr()  # the file descriptors: torch's logger writes there
    (line,) = err.strip().splitlines()
    assert line.startswith(f"seis report: error: --exported {path}: ")
    if kind == "folder":
        assert line.endswith("is a folder; give a file")
    elif kind == "script":
        assert line.endswith(f"pass it as --torchscript {path}")
    else:
        assert "not a loadable torch.export program" in line and "warnings above" not in line
        assert "miniz" not in line  # torch's advice on corrupt checkpoints: not ours to give
    assert not (tmp_path / "out").exists()


def test_lie_derivative_progress_bar_has_its_own_label(monkeypatch, rng):
    from seis_sklearn.adapters import _common

    labels = []

    def bar(total, enabled, desc="activations", unit="sample"):
        labels.append(desc)

    monkeypatch.setattr(_common, "progress_bar", bar)
    x = rng.normal(size=(4, 3, 8, 8)).astype(np.float32)
    TA.lie_derivative(_build(), x, progress=True)
    TA.layerwise_lie_derivative(_build(), x, layers=["0"], progress=True)
    assert labels == ["Lie derivative", "Lie derivative by layer"]


# ------------------------------------------------------------- item 5: mistyped options


@pytest.mark.parametrize(
    "argv, command, wanted",
    [
        (["report", "--transfrom", "rot90", "--out", "x"], "report", "--transform"),
        (["report", "--out", "x", "--memory-budgt=2"], "report", "--memory-budget"),
        (["score", "A.npy", "B.npy", "--n-component", "5"], "score", "--n-components"),
        (["score", "A.npy", "B.npy", "--form", "json"], "score", "--format"),
        (["report", "--pair", "p", "--out", "x"], "report", "--pairs"),
        (["demo", "--epoch", "2"], "demo", "--epochs"),
    ],
)
def test_a_mistyped_or_abbreviated_option_is_refused_with_the_nearest(argv, command, wanted,
                                                                      capsys):  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"usage: seis {command} ")  # the command's usage, not the top level
    bad = next(a for a in argv if a.startswith("--") and a.partition("=")[0] != wanted
               and a not in ("--out",)).partition("=")[0]  # fmt: skip
    assert err.strip().endswith(
        f"seis {command}: error: unrecognized option {bad}; did you mean {wanted}?"
    )


def test_a_stray_argument_gets_its_commands_usage(tmp_path, capsys):
    assert main(["report", "stray", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: seis report ") and "unrecognized arguments: stray" in err
    assert main(["score", "A.npy", "B.npy", "--format=json", "--n-componentz=3"]) == 2
    assert "did you mean --n-components?" in capsys.readouterr().err


# ------------------------------------------------------- item 7: the JSON summary, --raw


def test_score_json_is_the_summary_and_raw_adds_the_arrays(tmp_path, rng, capsys):
    A = rng.normal(size=(60, 4, 5, 5)).astype(np.float32)
    B = np.ascontiguousarray(np.rot90(A, axes=(2, 3))) + 0.1 * rng.normal(size=A.shape)
    np.save(tmp_path / "A.npy", A)
    np.save(tmp_path / "B.npy", B.astype(np.float32))
    want = seis_score(A, B.astype(np.float32))
    assert (
        main(["score", str(tmp_path / "A.npy"), str(tmp_path / "B.npy"), "--format", "json"]) == 0
    )
    summary = json.loads(capsys.readouterr().out)
    assert not {"canonical_correlations", "alignments", "weights", "fold_scores"} & set(summary)
    assert not any(isinstance(v, list) and len(v) > 4 for v in summary.values())
    assert summary["equivariance"] == want.equivariance and summary["n_components"] > 4
    assert main(["score", str(tmp_path / "A.npy"), str(tmp_path / "B.npy"), "--format", "json",
                 "--raw"]) == 0  # fmt: skip
    raw = json.loads(capsys.readouterr().out)
    for key in ("canonical_correlations", "alignments", "weights"):
        assert raw[key] == want.as_dict()[key] and len(raw[key]) == want.n_components
    assert raw["fold_scores"] == [
        {name: getattr(fold, name) for name in
         ("equivariance", "invariance", "equivariance_weighted", "invariance_weighted")}
        for fold in want.folds
    ]  # fmt: skip
    assert len(raw["fold_scores"]) == 5
    assert main(["score", str(tmp_path / "A.npy"), str(tmp_path / "B.npy"), "--raw"]) == 1
    assert "--raw goes with --format json" in capsys.readouterr().err


# ---------------------------------------------------- item 12: the CLI names its options


def test_over_budget_messages_name_the_command_lines_options(model_files, capsys):
    folder, _ = model_files
    tiny = ["--memory-budget", "0.000001"]
    assert _report(folder, folder / "x.npy", *tiny, "--over-budget", "error") == 1
    err = capsys.readouterr().err
    assert "--over-budget pool" in err and "--memory-budget/--time-budget" in err
    assert "over_budget" not in err and "budget=" not in err
    # refused before anything was kept: nothing is left half-written in --out (a run
    # record there asked the next run for --resume or --force)
    assert not (folder / "out").exists()
    assert _report(folder, folder / "x.npy", *tiny, "--over-budget", "skip") == 0
    out, err = capsys.readouterr()
    assert "--over-budget skip" in out and "--max-components" in out
    assert "seis report: warning: layer '0': not scored" in err
    assert err.count("layer '0'") == 1  # over budget before the pass, not scored after: once
    for text in (out, err, (folder / "out" / "report.csv").read_text()):
        assert "over_budget" not in text and "max_components=" not in text
        assert "budget=" not in text


MESSAGES = [  # (the library's words, what seis says)
    (
        "pass over_budget='pool' (average pooling), choose layers, or a larger budget=",
        "pass --over-budget pool (average pooling), choose layers, or a larger "
        "--memory-budget/--time-budget",
    ),
    ("layers: 'x' is not called from its parent", "--layers: 'x' is not called from its parent"),
    ("held_out must be a float in (0, 0.5]", "--held-out must be a float in (0, 0.5]"),
    ("too few samples: held_out=0.2 holds out", "too few samples: --held-out 0.2 holds out"),
    ("refits on stored activations: pass held_out=None", "refits on stored activations: pass "
     "--in-sample"),
    ("cv='auto' found 6 samples; pass cv= for honest scores",
     "the default evaluation found 6 samples; pass --cv for honest scores"),
    ("n_prefix=3 (--prefix-tokens) is not below 4; pass n_prefix= (--prefix-tokens N)",
     "--prefix-tokens 3 is not below 4; pass --prefix-tokens N"),
    ("say it: layout={'conv': 'NCHW'} (or 'NHWC'), --layout conv=NCHW on the command line",
     "say it: --layout conv=NCHW (or conv=NHWC)"),
    ("name the tensors to record: layers= (names or globs) or op_types=",
     "name the tensors to record: --layers (names or globs) or --op-type"),
    ("pass select= to say which part", "pass --select to say which part"),
    ("use solver='moments' (or 'auto')", "use --solver moments (or 'auto')"),
    ("n_components=0.99 asks for 99.0%; max_components=8 caps k",
     "--n-components 0.99 asks for 99.0%; --max-components 8 caps k"),
    ("random_state must be an int", "--seed must be an int"),
    # not arguments: left as they are
    ("tokens: the model's 1 prefix token dropped", "tokens: the model's 1 prefix token dropped"),
    ("layers[0].layout must be NCHW; k=3, d=1,024", "layers[0].layout must be NCHW; k=3, d=1,024"),
    ("--layout NHWC and --over-budget skip", "--layout NHWC and --over-budget skip"),
]  # fmt: skip


@pytest.mark.parametrize("api, cli", MESSAGES)
def test_library_messages_are_told_in_the_command_lines_options(api, cli):
    assert _cli_text(api) == cli


def test_the_module_entry_points_take_options_in_full_too(capsys):
    from seis_sklearn.adapters.torch import demo

    from seis_sklearn import demo as synthetic

    for entry, argv in ((synthetic.main, ["--sample", "40"]), (demo.main, ["--epoch", "1"])):
        with pytest.raises(SystemExit) as stopped:
            entry(argv)
        assert stopped.value.code == 2
        assert f"unrecognized arguments: {argv[0]}" in capsys.readouterr().err


def test_a_mistyped_command_gets_the_nearest(capsys):
    assert main(["reprot", "--out", "x"]) == 2
    assert (
        capsys.readouterr()
        .err.strip()
        .endswith("seis: error: unknown command 'reprot'; did you mean report?")
    )


def test_onnx_files_the_command_line_cannot_run_are_said_of_onnx(tmp_path, capsys):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    np.save(tmp_path / "x.npy", np.zeros((20, 3, 8, 8), np.float32))
    (tmp_path / "text.onnx").write_text("not a model")
    a, b = (helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", 3, 8, 8]) for n in "ab")
    out = helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 3, 8, 8])
    graph = helper.make_graph([helper.make_node("Add", ["a", "b"], ["out"])], "g", [a, b], [out])
    onnx.save(helper.make_model(graph), tmp_path / "two.onnx")
    for name, message in (
        ("text.onnx", "cannot be read as an ONNX model"),
        ("two.onnx", "the model takes 2 inputs ('a', 'b') and --inputs gives one array"),
    ):
        status = main(["report", "--onnx", str(tmp_path / name), "--inputs",
                       str(tmp_path / "x.npy"), "--transform", "rot90", "--out",
                       str(tmp_path / "out")])  # fmt: skip
        assert status == 1
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert line.startswith(f"seis report: error: --onnx {tmp_path / name}: {message}")
        assert "model:" not in line and "pass a dict" not in line
    assert not (tmp_path / "out").exists()


def test_a_pairs_folder_that_is_not_one_is_said_of_pairs(tmp_path, capsys):
    (tmp_path / "file.txt").write_text("x")
    (tmp_path / "empty").mkdir()
    for given, message in (
        (str(tmp_path / "missing"), "no such folder"),
        (str(tmp_path / "file.txt"), "not a folder"),
        (f"rot90={tmp_path / 'empty'}", "holds no saved pairs"),
    ):
        assert main(["report", "--pairs", given, "--out", str(tmp_path / "out")]) == 1
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert line.startswith(f"seis report: error: --pairs {given}: {message}")
    assert not (tmp_path / "out").exists()


def test_each_entry_point_says_the_cast_once_from_the_callers_line(rng):
    x = rng.integers(0, 255, size=(24, 3, 8, 8)).astype(np.uint8)
    rot = partial(TT.rot90, k=1)
    for inputs in (x, torch.from_numpy(x)):
        for call in (
            partial(TA.extract_activations, _build(), inputs, ["0"], transform=rot),
            partial(TA.stream_scores, _build(), inputs, ["0", "2"], rot),
        ):
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                call(batch_size=8, progress=False)
            cast = [w for w in caught if "inputs are uint8: cast to the model's float32" in
                    str(w.message)]  # fmt: skip
            assert len(cast) == 1 and cast[0].filename == __file__


def test_a_torchscript_option_given_an_exported_program_points_to_exported(tmp_path, capfd):
    model = _build().eval()
    program = torch.export.export(
        model, (torch.zeros(4, 3, 8, 8),), dynamic_shapes=({0: torch.export.Dim("batch")},)
    )
    torch.export.save(program, tmp_path / "m.pt2")
    (tmp_path / "text.pt").write_text("not a model")
    np.save(tmp_path / "x.npy", np.zeros((20, 3, 8, 8), np.float32))
    for name, ending in (
        ("m.pt2", f"a torch.export program, not a TorchScript model; pass it as --exported "
                  f"{tmp_path / 'm.pt2'}"),
        ("text.pt", "not a loadable TorchScript model ("),
    ):  # fmt: skip
        status = main(["report", "--torchscript", str(tmp_path / name), "--inputs",
                       str(tmp_path / "x.npy"), "--transform", "rot90", "--out",
                       str(tmp_path / "out")])  # fmt: skip
        assert status == 1
        (line,) = capfd.readouterr().err.strip().splitlines()
        head = f"seis report: error: --torchscript {tmp_path / name}: "
        assert line.startswith(head) and ending in line and "miniz" not in line


def test_a_refused_run_leaves_an_existing_out_folder_as_it_was(model_files, capsys):
    folder, _ = model_files
    out = folder / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    tiny = ["--memory-budget", "0.000001", "--over-budget", "error"]
    assert _report(folder, folder / "x.npy", *tiny) == 1
    assert "--over-budget pool" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir() if p.name != ".seis-report.lock") == ["notes.txt"]
    assert (out / "notes.txt").read_text() == "mine"
