"""`import seis_sklearn` stays light: no optional dependency, no compilation."""

import subprocess
import sys

HEAVY = (
    "torch",
    "onnx",
    "onnxruntime",
    "dask",
    "distributed",
    "pandas",
    "matplotlib",
    "numba",
    "hypothesis",
    "tqdm",
)


def _imported(statement):
    code = (
        f"import sys\n{statement}\n"
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r} + ('sklearn',))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(eval(out.stdout))


def test_import_loads_no_optional_dependency_and_no_sklearn():
    assert _imported("import seis_sklearn, seis_sklearn.transforms") == set()
    assert _imported("import seis_sklearn.adapters") == set()  # torch only with .torch


def test_the_public_names_add_nothing_beyond_what_sklearn_imports():
    # scikit-learn imports pandas itself when it is installed (sklearn.utils.fixes)
    ours = _imported("from seis_sklearn import seis_score, SEISScorer, SubspaceDenoiser")
    theirs = _imported("import sklearn.base, sklearn.model_selection, sklearn.utils.validation")
    assert ours == theirs and not ours & {"numba", "matplotlib", "torch", "dask", "hypothesis"}


def test_public_surface():
    import seis_sklearn

    assert set(seis_sklearn.__all__) == {
        "DenoisedStack",
        "LatentAction",
        "latent_action",
        "orbit",
        "pair",
        "SEISResult",
        "SEISScorer",
        "SubspaceDenoiser",
        "matricize",
        "seis_score",
        "__version__",
    }
    for name in seis_sklearn.__all__:
        assert hasattr(seis_sklearn, name)
    assert "seis_score" in dir(seis_sklearn)
    import pytest

    with pytest.raises(AttributeError, match="has no attribute 'nothing'"):
        seis_sklearn.nothing  # noqa: B018
