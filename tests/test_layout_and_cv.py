"""Issue 37 (items 3 and 4): arrays read in the layout their shape shows, and scores
cross-fitted by default.

* ``layout="auto"`` on a 4-D array ``(N, a, b, c)`` reads it channels last where only
  that reading gives a square grid (``a == b != c``), with a warning naming
  ``layout=``; where both readings are square it keeps NCHW and says so; a 5-D array
  that looks channels last is refused with the fix (there is no NDHWC layout). A
  saved-pairs report also uses the transform its folder records (rot90 keeps the
  shape only on a square grid).
* ``seis_score`` and ``seis score`` are cross-fitted over 5 folds when there are at
  least 10 samples; in-sample only when asked (``cv=None``, ``--in-sample``) or when
  the samples are too few, and the result says which and why. A variance share that
  the components could not reach is said, and so is ``degenerate`` in the CLI tables.
"""

import contextlib
import csv
import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from seis_sklearn import LayoutWarning, SEISScorer, seis_score
from seis_sklearn._matricize import auto_layout
from seis_sklearn.io import save_pairs
from tests.conftest import smooth_fields

SEIS = Path(sys.executable).with_name("seis")
SCORES = ("equivariance", "invariance", "equivariance_weighted", "invariance_weighted")


def seis(*args, timeout=300):
    return subprocess.run(
        [str(SEIS), *map(str, args)], capture_output=True, text=True, timeout=timeout
    )


def channels_last(x):
    return np.ascontiguousarray(np.moveaxis(x, 1, -1))


@pytest.fixture(scope="module")
def rotated_fields():
    """Smooth random fields (N=64, C=16, 12×12) and their quarter turns, channels first
    and channels last: a rot90 of smooth fields keeps nearly all of their information
    (SPEC §2.6 reference: S_E ≈ 0.98)."""
    A = smooth_fields(0, n=64, c=16, size=12)
    B = np.ascontiguousarray(np.rot90(A, axes=(2, 3)))
    return A, B, channels_last(A), channels_last(B)


@contextlib.contextmanager
def no_layout_warning():
    """A context in which a LayoutWarning is an error."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", LayoutWarning)
        yield


# ------------------------------------------------------------------ the shape rule


@pytest.mark.parametrize(
    ("shape", "layout", "warns"),
    [
        ((8, 16, 12, 12), "NCHW", False),  # only channels first is square
        ((8, 12, 12, 16), "NHWC", True),  # only channels last is square
        ((8, 1, 1, 512), "NHWC", True),  # a pooled map kept 4-D, channels last
        ((8, 8, 8, 8), "NCHW", True),  # both square: cannot tell, says so
        ((8, 16, 12, 20), "NCHW", False),  # neither square: nothing suggests channels last
        ((8, 3, 5), "NLD", False),
        ((8, 5), "ND", False),
        ((8, 4, 6, 8, 8), "NCDHW", False),
        ((8, 6, 6, 6, 6), "NCDHW", True),  # both readings cubic: cannot tell
    ],
)
def test_auto_layout_by_shape(shape, layout, warns):
    found = auto_layout(shape)
    assert found.layout == layout and not found.error
    assert bool(found.warning) == warns
    if warns and layout == "NHWC":
        assert "layout='NHWC'" in found.warning and "layout='NCHW'" in found.warning


def test_a_quarter_turn_decides_which_grid_is_square():
    """rot90 keeps an array's shape only on a square grid: the reading whose grid is
    not square is impossible, which no shape alone can say for (N, 12, 12, 16)
    against (N, 16, 12, 12) — and nothing decides (N, 8, 8, 8)."""
    found = auto_layout((8, 12, 12, 16), square_grid="rot90")
    assert found.layout == "NHWC" and not found.warning and "rot90" in found.choice
    assert auto_layout((8, 16, 12, 12), square_grid="rot90").layout == "NCHW"
    assert auto_layout((8, 8, 8, 8), square_grid="rot90").warning  # still ambiguous
    neither = auto_layout((8, 12, 16, 20), square_grid="rot90")
    assert neither.layout == "NCHW" and "neither reading" in neither.warning


def test_a_channels_last_5d_array_is_refused_with_the_fix():
    A = np.zeros((12, 4, 8, 8, 3))  # (N, D, H, W, C): H×W square only channels last
    with pytest.raises(ValueError, match=r"moveaxis\(A, -1, 1\).*layout='NCDHW'"):
        seis_score(A, A)
    with no_layout_warning():  # said, it is read as given
        rng = np.random.default_rng(0)
        A = rng.normal(size=(12, 4, 8, 8, 3))
        assert seis_score(A, A, layout="NCDHW", cv=None).layout == "NCDHW"


# ------------------------------------------------------------------ arrays


def test_seis_score_reads_channels_last_fields_right(rotated_fields):
    A, B, An, Bn = rotated_fields
    want = seis_score(A, B, layout="NCHW")
    with pytest.warns(LayoutWarning, match=r"12×12 grid of 16 channels.*layout='NHWC'"):
        got = seis_score(An, Bn)
    assert got.layout == "NHWC" and got.grid == (12, 12)
    assert got.layout_choice.startswith("auto: channels last")
    # an NHWC array scores as its NCHW transpose (SPEC §2.6), up to rounding
    for name in SCORES:
        assert getattr(got, name) == pytest.approx(getattr(want, name), abs=1e-9)
    assert want.equivariance > 0.9  # rot90 of smooth fields keeps their information
    # read channels first, the 12 rows of the grid become channels and the 16
    # channels a 12×16 "grid" that rot90 does not permute: most of it is lost
    wrong = seis_score(An, Bn, layout="NCHW")
    assert wrong.grid == (12, 16) and wrong.equivariance < want.equivariance - 0.3
    assert "NHWC (12×12 grid)" in repr(got) and "layout: auto: channels last" in repr(got)


def test_a_given_layout_is_read_as_given_without_a_warning(rotated_fields):
    A, B, An, Bn = rotated_fields
    with no_layout_warning():
        r = seis_score(An, Bn, layout="NHWC")
        first = seis_score(A, B)  # square only channels first: clear, silent
    assert r.layout_choice == "given" and r.grid == (12, 12)
    assert first.layout == "NCHW" and first.layout_choice.startswith("auto: channels first")


def test_an_ambiguous_shape_keeps_nchw_and_says_so():
    rng = np.random.default_rng(1)
    A = rng.normal(size=(20, 8, 8, 8))
    with pytest.warns(LayoutWarning, match="cannot tell"):
        r = seis_score(A, A[:, :, ::-1], cv=None)
    assert r.layout == "NCHW" and "either" in r.layout_choice
    assert "layout: auto: channels first (default; 8×8×8 could be either)" in repr(r)


def test_the_estimator_reads_the_layout_by_shape_too(rotated_fields):
    A, B, An, Bn = rotated_fields
    with pytest.warns(LayoutWarning):
        scorer = SEISScorer().fit(An[:48], Bn[:48])
    assert scorer.layout_ == "NHWC" and scorer.result_.grid == (12, 12)
    held_out = scorer.scores(An[48:], Bn[48:])
    assert held_out.layout == "NHWC" and held_out.grid == (12, 12)
    reference = SEISScorer(layout="NCHW").fit(A[:48], B[:48])
    assert held_out.equivariance == pytest.approx(reference.score(A[48:], B[48:]), abs=1e-9)


# ------------------------------------------------------------------ the default cv


def test_seis_score_is_cross_fitted_by_default(rotated_fields):
    A, B, _, _ = rotated_fields
    r = seis_score(A, B)
    five = seis_score(A, B, cv=5)
    assert r.evaluation == "cross-fitted" and r.n_folds == 5 and not r.evaluation_reason
    for name in SCORES:
        assert getattr(r, name) == getattr(five, name)
    inside = seis_score(A, B, cv=None)
    assert inside.evaluation == "in-sample" and inside.evaluation_reason == "cv=None asked for it"
    assert "in-sample because cv=None asked for it" in repr(inside)


def test_the_issue_case_unrelated_data_is_not_rated_equivariant():
    """Independent views, flatten, 95% of the variance asked, no ridge: in-sample k
    runs into its cap m − R = 63 of 64 rows, where canonical correlations are ≈ 1
    whatever the data; held out they are not."""
    rng = np.random.default_rng(2)
    A, B = rng.normal(size=(2, 64, 16, 4, 4))
    params = dict(matricization="flatten", n_components=0.95, reg=0.0)
    with pytest.warns(UserWarning, match="variance share asked for was not reached"):
        inside = seis_score(A, B, cv=None, **params)
    assert inside.equivariance > 0.99 and inside.degenerate  # the bias the default avoids
    with pytest.warns(UserWarning, match="not reached"):
        r = seis_score(A, B, **params)
    assert r.evaluation == "cross-fitted" and r.equivariance < 0.5
    # 256 columns, 64 samples: k is capped at 63 and keeps well under 95 %
    assert r.n_components == 63 and r.explained_variance_ratio < 0.95
    assert r.variance_target == 0.95
    assert "capped at m − R = 63" in r.variance_shortfall and "folds" in r.variance_shortfall
    assert "variance target not reached" in repr(r)


def test_a_reached_target_or_a_number_of_components_is_not_flagged(rotated_fields):
    A, B, _, _ = rotated_fields
    r = seis_score(A, B, n_components=0.9)
    assert r.explained_variance_ratio >= 0.9 and r.variance_shortfall == ""
    fixed = seis_score(A, B, n_components=5)
    assert fixed.variance_target is None and fixed.variance_shortfall == ""
    with pytest.warns(UserWarning, match="max_components=2 caps k"):
        capped = seis_score(A, B, n_components=0.99, max_components=2)
    assert capped.n_components == 2 and "max_components" in capped.variance_shortfall


@pytest.mark.parametrize(("n", "evaluation"), [(9, "in-sample"), (10, "cross-fitted")])
def test_too_few_samples_for_the_folds_fall_back_to_in_sample_and_say_why(n, evaluation):
    rng = np.random.default_rng(3)
    A = rng.normal(size=(n, 4, 6, 6))
    B = A + 0.5 * rng.normal(size=A.shape)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        r = seis_score(A, B)
    assert r.evaluation == evaluation
    fell_back = [w for w in caught if "too few to cross-fit" in str(w.message)]
    if evaluation == "in-sample":
        assert fell_back and f"found {n} samples" in r.evaluation_reason
    else:
        assert not fell_back and r.n_folds == 5 and r.evaluation_reason == ""


def test_permutations_and_bootstrap_follow_the_default_folds(rotated_fields):
    A, B, _, _ = rotated_fields
    A, B = A[:30], B[:30]
    r = seis_score(A, B, n_permutations=3, n_bootstrap=3, random_state=0)
    want = seis_score(A, B, cv=5, n_permutations=3, n_bootstrap=3, random_state=0)
    assert r.evaluation == "cross-fitted" and r.p_values == want.p_values
    assert r.ci_low == want.ci_low and r.ci_high == want.ci_high


def test_the_estimators_score_stays_on_the_data_given(rotated_fields):
    A, B, _, _ = rotated_fields
    scorer = SEISScorer(reg=0.0).fit(A, B)
    held_out = scorer.scores(A, B)  # scored on the data given, not cross-fitted
    assert held_out.evaluation == "held-out" and held_out.n_folds is None
    assert scorer.score(A, B) == held_out.equivariance
    # on the fitting data the held-out formula gives back the in-sample scores (SPEC
    # §2.4); without the ridge they agree to rounding
    assert held_out.equivariance == pytest.approx(
        seis_score(A, B, cv=None, reg=0.0).equivariance, abs=1e-8
    )


def test_a_dask_array_is_cross_fitted_by_default(rotated_fields):
    da = pytest.importorskip("dask.array")
    A, B, _, _ = rotated_fields
    r = seis_score(da.from_array(A, chunks=16), da.from_array(B, chunks=16))
    want = seis_score(A, B, cv=5)
    assert r.evaluation == "cross-fitted" and r.n_folds == 5
    assert r.equivariance == pytest.approx(want.equivariance, abs=1e-9)


# ------------------------------------------------------------------ the command line


@pytest.fixture
def saved(tmp_path, rotated_fields):
    A, B, An, Bn = rotated_fields
    np.save(tmp_path / "a.npy", An)
    np.save(tmp_path / "b.npy", Bn)
    return tmp_path


def test_cli_score_reads_saved_channels_last_arrays(saved, rotated_fields):
    A, B, _, _ = rotated_fields
    proc = seis("score", saved / "a.npy", saved / "b.npy", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    want = seis_score(A, B, layout="NCHW")
    assert got["layout"] == "NHWC" and got["grid"] == [12, 12]
    assert got["evaluation"] == "cross-fitted" and got["n_folds"] == 5
    assert got["equivariance"] == pytest.approx(want.equivariance, abs=1e-9)
    assert "--layout NHWC to confirm" in proc.stderr
    table = seis("score", saved / "a.npy", saved / "b.npy", "--layout", "NCHW")
    assert table.returncode == 0 and "--layout" not in table.stderr
    assert "read as NCHW (12×16 grid); layout given" in table.stdout
    (line,) = [x for x in table.stdout.splitlines() if x.startswith("equivariance ")]
    assert float(line.split()[1]) < want.equivariance - 0.3


def test_cli_score_table_says_evaluation_degenerate_and_variance(tmp_path):
    rng = np.random.default_rng(2)
    A, B = rng.normal(size=(2, 64, 16, 4, 4))
    np.save(tmp_path / "a.npy", A)
    np.save(tmp_path / "b.npy", B)
    args = ("score", tmp_path / "a.npy", tmp_path / "b.npy", "--matricization", "flatten",
            "--n-components", "0.95", "--reg", "0")  # fmt: skip
    proc = seis(*args)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    (line,) = [x for x in lines if x.startswith("equivariance ")]
    assert float(line.split()[1]) < 0.5
    (degenerate,) = [x for x in lines if x.startswith("degenerate ")]
    assert degenerate.split()[1] == "yes" and "k=63 is at least half of the m=64" in degenerate
    assert any(x.startswith("cross-fitted over 5 folds; k = 63") for x in lines)
    assert any(x.startswith("variance target not reached: --n-components 0.95") for x in lines)
    inside = seis(*args, "--in-sample")
    assert inside.returncode == 0, inside.stderr
    (line,) = [x for x in inside.stdout.splitlines() if x.startswith("equivariance ")]
    assert float(line.split()[1]) > 0.99
    assert "in-sample because --in-sample asked for it" in inside.stdout
    assert seis(*args, "--in-sample", "--cv", "3").returncode == 2  # one or the other


def test_cli_csv_carries_layout_grid_and_reasons(saved):
    proc = seis("score", saved / "a.npy", saved / "b.npy", "--format", "csv")
    assert proc.returncode == 0, proc.stderr
    (row,) = list(csv.DictReader(proc.stdout.splitlines()))
    assert row["layout"] == "NHWC" and row["grid"] == "12x12"
    assert row["layout_choice"].startswith("auto: channels last")
    assert row["evaluation"] == "cross-fitted" and row["variance_shortfall"] == ""


def _report_rows(folder):
    with open(Path(folder) / "report.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_report_pairs_reads_a_channels_last_folder(tmp_path, rotated_fields):
    A, B, An, Bn = rotated_fields
    rng = np.random.default_rng(4)
    cube = rng.normal(size=(40, 8, 8, 8))
    save_pairs(
        tmp_path / "p", {"conv": (An, Bn), "cube": (cube, np.rot90(cube, axes=(2, 3)))},
        transform="rot90",
    )  # fmt: skip
    proc = seis("report", "--pairs", tmp_path / "p", "--out", tmp_path / "r")
    assert proc.returncode == 0, proc.stderr
    conv, cube_row = _report_rows(tmp_path / "r")
    want = seis_score(A, B, cv=5)
    assert conv["layout"] == "NHWC" and "rot90 needs a square grid" in conv["layout_choice"]
    assert float(conv["equivariance"]) == pytest.approx(want.equivariance, abs=1e-6)  # csv
    # (N, 8, 8, 8): both readings square, rot90 cannot decide — NCHW, said
    assert cube_row["layout"] == "NCHW" and "either" in cube_row["layout_choice"]
    assert "cannot tell" in proc.stderr
    assert "degenerate" in proc.stdout and "NHWC" in proc.stdout  # the printed table


def test_report_pairs_refuses_a_layout_rot90_cannot_keep(tmp_path, rotated_fields):
    _, _, An, Bn = rotated_fields
    save_pairs(tmp_path / "p", {"conv": (An, Bn)}, transform="rot90")
    proc = seis("report", "--pairs", tmp_path / "p", "--out", tmp_path / "r", "--layout", "NCHW")
    assert proc.returncode == 0, proc.stderr  # the row says why; the report goes on
    (row,) = _report_rows(tmp_path / "r")
    assert row["equivariance"] in ("", "nan")
    assert "12×16 grid, which rot90 cannot keep" in row["degenerate_reason"]
    assert "--layout conv=NHWC" in row["degenerate_reason"]
