"""Issue 38 (hardening, round 3): the core's part — messages that say the real cause,
one rule for views without variance, fitted attributes before a fit can exist, and
non-numeric frames."""

import pytest

from seis_sklearn import SEISScorer, SubspaceDenoiser, seis_score
from seis_sklearn.metrics import linear_cka

pd = pytest.importorskip("pandas")
torch = pytest.importorskip("torch")


def test_too_few_images_for_a_report_say_so_with_the_number_needed():
    """5 images: held_out=0.2 holds out 1, and the report said 'no variance in the
    fitted subspace (every feature is constant …)'."""
    from seis_sklearn.adapters.torch import layerwise_seis
    from seis_sklearn.adapters.torch import transforms as TT

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU())
    with pytest.raises(ValueError, match="too few samples") as info:
        layerwise_seis(model, torch.randn(5, 1, 8, 8), {"rot90": TT.rot90}, progress=False)
    message = str(info.value)
    assert "1 for layer '0'" in message and "give at least 10 inputs" in message
    assert "constant" not in message
    frame = layerwise_seis(model, torch.randn(10, 1, 8, 8), {"rot90": TT.rot90}, progress=False)
    assert frame["equivariance"].notna().all()


def test_held_out_scores_of_one_sample_are_refused_by_name(rng):
    A = rng.normal(size=(30, 6))
    scorer = SEISScorer().fit(A, A[:, ::-1])
    with pytest.raises(ValueError, match="X has 1 sample; at least 2 samples are required"):
        scorer.scores(A[:1], A[:1, ::-1])


def test_a_fitted_attribute_before_two_samples_says_why(rng):
    x = rng.normal(size=(3, 2, 4, 4))
    scorer = SEISScorer().partial_fit(x[:1], x[:1])
    with pytest.raises(AttributeError, match="partial_fit has seen 1 sample, and a fit needs"):
        _ = scorer.result_
    assert not hasattr(scorer, "components_")
    scorer.partial_fit(x[1:], x[1:])
    assert scorer.result_.equivariance == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(AttributeError, match="has no attribute 'nothing_'"):
        _ = SEISScorer().nothing_


@pytest.mark.parametrize(
    "call",
    [
        lambda X: seis_score(X, X, cv=None),
        lambda X: SEISScorer().fit(X, X),
        lambda X: linear_cka(X, X),
        lambda X: SubspaceDenoiser().fit(X),
    ],
)
def test_categorical_columns_are_refused_naming_the_column(call, rng):
    frame = pd.DataFrame({"a": pd.Categorical(rng.integers(0, 3, 40)), "b": rng.normal(size=40)})
    with pytest.raises(TypeError, match="column 'a' has dtype category"):
        call(frame)
    numeric = pd.DataFrame({"a": rng.normal(size=40), "b": rng.normal(size=40)})
    call(numeric)  # plain numeric columns are read as they are
