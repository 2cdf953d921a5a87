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
        "LayoutWarning",
        "PairedStack",
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


def test_the_moment_modules_import_each_other_one_way():
    """No import cycle: _validation ← _moments ← _dask, and only _accumulate knows all."""
    import ast
    from pathlib import Path

    package = Path(__file__).resolve().parents[1] / "seis_sklearn"

    def imports(name):
        tree = ast.parse((package / f"{name}.py").read_text())
        found = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module:
                found.add(node.module)
        return found

    assert not imports("_validation") & {"_moments", "_dask", "_accumulate", "_torch"}
    assert not imports("_moments") & {"_dask", "_accumulate", "_torch"}
    assert not imports("_dask") & {"_accumulate", "_torch"}
    assert not imports("_torch") & {"_dask", "_accumulate"}
