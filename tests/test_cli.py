"""The ``seis`` command line, run through its installed entry point in a subprocess."""

import csv
import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest

from seis_sklearn import __version__, seis_score
from seis_sklearn.cli import main
from seis_sklearn.io import save_pairs, write_manifest

SEIS = Path(sys.executable).with_name("seis")
SCORES = ("equivariance", "invariance", "equivariance_weighted", "invariance_weighted")


def seis(*args, cwd=None, timeout=300):
    assert SEIS.exists(), "the seis console script is not installed (pip install -e .)"
    return subprocess.run(
        [str(SEIS), *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=timeout,
    )


@pytest.fixture
def pair(tmp_path, rng):
    A = rng.normal(size=(48, 6, 7, 7)).astype(np.float32)
    B = np.ascontiguousarray(np.rot90(A, axes=(2, 3)))
    B += 0.3 * rng.normal(size=B.shape).astype(np.float32)
    np.save(tmp_path / "A.npy", A)
    np.save(tmp_path / "B.npy", B)
    return A, B


def test_score_npy_json_equals_seis_score(tmp_path, pair):
    A, B = pair
    proc = seis("score", tmp_path / "A.npy", tmp_path / "B.npy", "--format", "json", "--raw")
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    want = seis_score(A, B).as_dict()
    for key, value in want.items():
        assert got[key] == value, key  # floats printed with full precision
    assert got["shape"] == list(A.shape)


def test_score_npz_csv_with_cv_equals_seis_score(tmp_path, pair):
    A, B = pair
    np.savez(tmp_path / "acts.npz", conv=A, conv_rot=B)
    proc = seis(
        "score",
        f"{tmp_path / 'acts.npz'}:conv",
        f"{tmp_path / 'acts.npz'}:conv_rot",
        "--cv",
        "3",
        "--n-components",
        "12",
        "--format",
        "csv",
    )
    assert proc.returncode == 0, proc.stderr
    (row,) = list(csv.DictReader(io.StringIO(proc.stdout)))
    want = seis_score(A, B, cv=3, n_components=12)
    for key in SCORES:
        assert float(row[key]) == getattr(want, key)
        assert float(row[f"{key}_std"]) == getattr(want, f"{key}_std")
    assert row["evaluation"] == "cross-fitted" and int(row["n_folds"]) == 3
    assert int(row["n_components"]) == 12


def test_score_pair_npz_table_and_options(tmp_path, pair):
    A, B = pair
    save_pairs(tmp_path / "pairs", {"conv": (A, B)})
    proc = seis(
        "score", tmp_path / "pairs" / "conv.npz", "--matricization", "flatten", "--reg", "0"
    )
    assert proc.returncode == 0, proc.stderr
    want = seis_score(A, B, matricization="flatten", reg=0.0)
    lines = proc.stdout.splitlines()
    for key in SCORES:
        (line,) = [x for x in lines if x.startswith(key + " ")]
        assert line.split()[1] == f"{getattr(want, key):.4f}"
    assert "flatten matricization of NCHW" in proc.stdout
    assert "cross-fitted over 5 folds" in proc.stdout and want.n_folds == 5  # the default


def test_score_out_is_written_and_never_clobbered(tmp_path, pair):
    out = tmp_path / "result.json"
    args = ("score", tmp_path / "A.npy", tmp_path / "B.npy", "--format", "json", "--out", out)
    first = seis(*args)
    assert first.returncode == 0 and first.stdout == ""
    assert json.loads(out.read_text())["evaluation"] == "cross-fitted"
    out.write_text("keep me")
    again = seis(*args)
    assert again.returncode == 1 and "exists; pass --force" in again.stderr
    assert out.read_text() == "keep me"
    assert seis(*args, "--force").returncode == 0
    assert json.loads(out.read_text())["A"].endswith("A.npy")


def test_object_npz_and_truncated_npy_are_one_line_errors(tmp_path, pair):
    np.savez(tmp_path / "obj.npz", x=np.array([{"a": 1}], dtype=object))
    data = (tmp_path / "A.npy").read_bytes()
    (tmp_path / "cut.npy").write_bytes(data[: len(data) - 100])
    for bad, message in (("obj.npz", "holds Python objects"), ("cut.npy", "truncated")):
        proc = seis("score", tmp_path / bad, tmp_path / "B.npy")
        assert proc.returncode == 1
        assert proc.stdout == ""
        assert len(proc.stderr.splitlines()) == 1 and message in proc.stderr
        assert proc.stderr.startswith("seis score: error: ")
    debug = seis("score", tmp_path / "cut.npy", tmp_path / "B.npy", "--debug")
    assert debug.returncode == 1 and "Traceback" in debug.stderr


def test_usage_help_and_version():
    assert seis("score").returncode == 2
    assert seis("score", "a.npy", "b.npy", "--format", "xml").returncode == 2
    assert seis("report", "--pairs", "x").returncode == 2  # --out is required
    assert seis().returncode == 2
    version = seis("--version")
    assert version.returncode == 0 and version.stdout.strip() == f"seis-sklearn {__version__}"
    top = seis("--help")
    assert top.returncode == 0 and "exit status: 0 success, 1 failure" in top.stdout
    for command in ("score", "report", "demo"):
        proc = seis(command, "--help")
        assert proc.returncode == 0 and "examples:" in proc.stdout and "--quiet" in proc.stdout


def _report_rows(folder):
    with open(Path(folder) / "report.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_report_from_saved_pairs_folders(tmp_path, rng):
    A = rng.normal(size=(40, 4, 7, 7))
    layers = {"conv1": (A, np.rot90(A, axes=(2, 3))), "conv2": (A[:, :2], -A[:, :2])}
    save_pairs(tmp_path / "rot", layers, transform="rot90", modules={"conv1": "Conv2d"})
    # the .npy naming scheme in a second folder, named on the command line
    flipped = tmp_path / "flip"
    flipped.mkdir()
    for name, (a, _) in layers.items():
        np.save(flipped / f"{name}.original.npy", a)
        np.save(flipped / f"{name}.transformed.npy", np.flip(a, axis=3))
    out = tmp_path / "out"
    proc = seis("report", "--pairs", tmp_path / "rot", "--pairs", f"hflip={flipped}", "--out", out)
    assert proc.returncode == 0, proc.stderr
    rows = _report_rows(out)
    assert [(r["transform"], r["layer"], r["depth"]) for r in rows] == [
        ("hflip", "conv1", "0"),
        ("hflip", "conv2", "1"),
        ("rot90", "conv1", "0"),
        ("rot90", "conv2", "1"),
    ]
    assert rows[2]["module"] == "Conv2d" and rows[0]["evaluation"] == "cross-fitted"
    assert {r["matricization"] for r in rows} == {"spatial"}  # --matricization auto: 7×7 maps
    assert {r["matricization_choice"] for r in rows} == {"auto: 7×7 map"}
    for r in rows:  # the flag and its reason travel to the CSV
        assert (r["degenerate"] == "True") == bool(r["degenerate_reason"])
    for row in rows:
        a, b = layers[row["layer"]][0], None
        b = np.rot90(a, axes=(2, 3)) if row["transform"] == "rot90" else np.flip(a, axis=3)
        if row["transform"] == "rot90" and row["layer"] == "conv2":
            b = -a
        want = seis_score(a, b, cv=5)
        for key in SCORES:
            assert float(row[key]) == pytest.approx(getattr(want, key), abs=1e-6)
    assert (out / "layers.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "rot90" in proc.stdout and "conv2" in proc.stdout


def _slow_pairs(tmp_path, rng, n_layers=12):
    """A folder whose layers take ~0.3 s each: many names over one file via the manifest."""
    folder = tmp_path / "pairs"
    A = rng.normal(size=(256, 32, 16, 16)).astype(np.float32)
    save_pairs(folder, {"base": (A, np.ascontiguousarray(np.rot90(A, axes=(2, 3))))})
    write_manifest(
        folder,
        [{"name": f"layer{i}", "file": "base", "module": "Conv2d"} for i in range(n_layers)],
        transform="rot90",
    )
    return folder


def test_interrupted_report_resumes_to_the_same_csv(tmp_path, rng):
    folder = _slow_pairs(tmp_path, rng)
    whole = seis("report", "--pairs", folder, "--out", tmp_path / "whole", "-q")
    assert whole.returncode == 0, whole.stderr

    out = tmp_path / "cut"
    # an event, not the clock: the run says when its third layer is loaded (two rows
    # written) and waits there, on its stdin, until it is killed
    hold = textwrap.dedent(
        """
        import sys
        from seis_sklearn.io import LayerPair
        loaded = LayerPair.load
        def load(self, *args, **kwargs):
            pair = loaded(self, *args, **kwargs)
            if self.name == "layer2":
                print("holding at layer2", flush=True)
                sys.stdin.read()  # until the test kills the run
            return pair
        LayerPair.load = load
        from seis_sklearn.cli import console
        sys.argv = ["seis", *sys.argv[1:]]
        console()
        """
    )
    process = subprocess.Popen(
        [sys.executable, "-c", hold, "report", "--pairs", str(folder), "--out", str(out), "-q"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    hang = threading.Timer(600, process.kill)  # only a safety net against a hang
    hang.start()
    try:
        assert process.stdout.readline() == "holding at layer2\n", process.stderr.read()
        os.kill(process.pid, signal.SIGKILL)  # mid-layer: no chance to clean up
    finally:
        hang.cancel()
        process.kill()
        process.communicate()
    kept = sorted(p.name for p in (out / "rows").glob("*.json"))
    assert kept == ["t000-l0000.json", "t000-l0001.json"], "not stopped at layer2"
    assert not (out / "report.csv").exists()
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]  # nothing half-written

    refused = seis("report", "--pairs", folder, "--out", out)
    assert refused.returncode == 1 and "unfinished run" in refused.stderr
    other = seis("report", "--pairs", folder, "--out", out, "--resume", "--cv", "3")
    assert other.returncode == 1 and "different settings (cv differ)" in other.stderr
    resumed = seis("report", "--pairs", folder, "--out", out, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming: {len(kept)} layer results" in resumed.stderr
    assert (out / "report.csv").read_bytes() == (tmp_path / "whole" / "report.csv").read_bytes()


def test_finished_report_is_never_overwritten_without_force(tmp_path, rng):
    A = rng.normal(size=(20, 3, 5, 5))
    save_pairs(tmp_path / "p", {"a": (A, -A)})
    out = tmp_path / "out"
    assert seis("report", "--pairs", tmp_path / "p", "--out", out).returncode == 0
    before = (out / "report.csv").read_bytes()
    for extra in ((), ("--resume",), ("--in-sample",)):
        proc = seis("report", "--pairs", tmp_path / "p", "--out", out, *extra)
        assert proc.returncode == 1 and "holds a finished report" in proc.stderr
    assert (out / "report.csv").read_bytes() == before
    forced = seis("report", "--pairs", tmp_path / "p", "--out", out, "--force", "--in-sample")
    assert forced.returncode == 0
    assert _report_rows(out)[0]["evaluation"] == "in-sample"
    # a folder with someone else's report.csv is not ours to replace
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "report.csv").write_text("theirs")
    proc = seis("report", "--pairs", tmp_path / "p", "--out", foreign)
    assert proc.returncode == 1 and "other than a seis report run" in proc.stderr
    assert (foreign / "report.csv").read_text() == "theirs"


def _tree(root):
    """Every path under root → its content's mtime (files) or None (folders)."""
    return {
        p.relative_to(root): p.stat().st_mtime_ns if p.is_file() else None for p in root.rglob("*")
    }


def test_nothing_is_written_outside_out(tmp_path, rng):
    data, work = tmp_path / "data", tmp_path / "work"
    work.mkdir()
    A = rng.normal(size=(20, 3, 5, 5))
    # a layer name that tries to climb out of the folder
    save_pairs(data / "pairs", {"../../escape": (A, -A), "/abs": (A, A)})
    np.save(data / "A.npy", A)
    before = _tree(tmp_path)
    assert seis("report", "--pairs", data / "pairs", "--out", "out", cwd=work).returncode == 0
    score_out = work / "out" / "score.json"
    assert seis("score", data / "A.npy", data / "A.npy", "--out", score_out).returncode == 0
    after = _tree(tmp_path)
    new = [p for p in after if p not in before]
    changed = [p for p in before if before[p] != after.get(p)]
    assert changed == []
    assert new and all(p.parts[:2] == ("work", "out") for p in new), new
    rows = _report_rows(work / "out")
    assert {r["layer"] for r in rows} == {"../../escape", "/abs"}


@pytest.mark.parametrize(
    "argv, message",
    [
        (["report", "--out", "o"], "give a source"),
        (["report", "--pairs", "p", "--torchscript", "m.pt", "--out", "o"], "not both"),
        (["report", "--torchscript", "m.pt", "--out", "o"], "needs --inputs"),
        (["report", "--torchscript", "m.pt", "--inputs", "x.npy", "--out", "o"], "--transform"),
        (["report", "--pairs", "p", "--transform", "rot90", "--out", "o"], "goes with a model"),
        (["report", "--torchscript", "m", "--weights", "w", "--out", "o"], "goes with --model"),
        (
            ["report", "--torchscript", "m", "--model", "a:b", "--out", "o"],
            "--torchscript or --model, not both",
        ),
        (
            ["report", "--torchscript", "m.pt", "--inputs", "x", "--transform", "rot45"],
            "unknown step 'rot45'",
        ),
        (["score", "one.npy"], "give two arrays"),
        (
            ["report", "--torchscript", "m", "--op-type", "Conv", "--inputs", "x"],
            "--op-type selects tensors of an --onnx model",
        ),
        (["report", "--onnx", "m", "--model", "a:b"], "give one model: --onnx or --model"),
        (["report", "--pairs", "d", "--tokens", "patch"], "needs --prefix-tokens N here"),
        (
            ["report", "--pairs", "d", "--tokens", "all", "--prefix-tokens", "1"],
            "--prefix-tokens goes with --tokens patch or auto, not all",
        ),
    ],
)
def test_argument_errors_name_the_problem(tmp_path, capsys, argv, message):
    if "--out" not in argv and argv[0] == "report":
        argv = [*argv, "--out", "o"]
    with _cwd(tmp_path):
        assert main(argv) == 1
    err = capsys.readouterr().err
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "o").exists()  # nothing written for a refused command


class _cwd:
    def __init__(self, path):
        self.path = path

    def __enter__(self):
        self.old = os.getcwd()
        os.chdir(self.path)

    def __exit__(self, *exc):
        os.chdir(self.old)


def test_report_layers_filter_and_unknown_pattern(tmp_path, rng, capsys):
    A = rng.normal(size=(20, 3, 5, 5))
    save_pairs(tmp_path / "p", {"conv1": (A, -A), "conv2": (A, A), "fc": (A, A)})
    out = tmp_path / "out"
    assert (
        main(
            [
                "report",
                "--pairs",
                str(tmp_path / "p"),
                "--layers",
                "conv*",
                "--out",
                str(out),
                "-q",
                "--in-sample",
            ]
        )
        == 0
    )
    assert [r["layer"] for r in _report_rows(out)] == ["conv1", "conv2"]
    capsys.readouterr()
    code = main(
        [
            "report",
            "--pairs",
            str(tmp_path / "p"),
            "--layers",
            "cnv1",
            "--out",
            str(tmp_path / "o2"),
        ]
    )
    assert code == 1 and "did you mean 'conv1'" in capsys.readouterr().err


def test_demo_refuses_to_overwrite(tmp_path):
    (tmp_path / "report.csv").write_text("old")
    proc = seis("demo", "--out", tmp_path)
    assert proc.returncode == 1 and "pass --force" in proc.stderr
    assert (tmp_path / "report.csv").read_text() == "old"


def test_score_and_report_carry_statistics_and_metrics(tmp_path, pair):
    from seis_sklearn.metrics import linear_cka, svcca

    A, B = pair
    proc = seis("score", tmp_path / "A.npy", tmp_path / "B.npy", "--format", "json",
                "--permutations", "5", "--bootstrap", "4", "--seed", "3")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    want = seis_score(A, B, n_permutations=5, n_bootstrap=4, random_state=3)
    assert got["p_values"] == want.p_values and got["ci_low"] == want.ci_low
    save_pairs(tmp_path / "p", {"conv": (A, B)})
    out = tmp_path / "r"
    options = ["--metrics", "cka", "--metrics", "svcca", "--permutations", "4", "--seed", "0"]
    proc = seis("report", "--pairs", tmp_path / "p", "--out", out, *options, "--in-sample")
    assert proc.returncode == 0, proc.stderr
    (row,) = _report_rows(out)
    # the standard CKA of the flattened activations, whatever the layer's matricization
    assert float(row["cka"]) == pytest.approx(linear_cka(A, B), abs=1e-6)
    assert float(row["svcca"]) == pytest.approx(svcca(A, B, matricization="spatial"), abs=1e-6)
    want = seis_score(A, B, n_permutations=4, random_state=0, cv=None)  # as --in-sample
    assert float(row["equivariance_p"]) == pytest.approx(want.p_values["equivariance"])
