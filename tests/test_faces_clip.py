"""The shipped faces CLIP measures what its prompts say (Spearman rho vs true attributes).

The weights are in the repository: a missing file fails here with the loader's message (where
to get it), not a skip that a passing run would hide."""

from qdgs_lib import face_synthesis
from qdgs_lib.profiles import get_profile

RHO_MIN = 0.8  # every measure must rank renders like the true attribute does


def test_faces_clip_measures_correlate_with_true_attributes():
    p = get_profile("default", "faces")
    scorer = face_synthesis.build_scorer(p)
    df = face_synthesis.measure_truth(scorer, p, n=384, seed=123)
    rho = face_synthesis.measure_correlations(df, p)
    print("Spearman rho:", rho)
    assert set(rho) == {"skin", "gender", "hair", "age"}
    assert all(r > RHO_MIN for r in rho.values()), rho
    # the profile's archive ranges hold the bulk of the measures of balanced renders
    for k, m in enumerate(p["measures"]):
        lo, hi = m.range
        inside = df[f"measures_{k}"].between(lo, hi).mean()
        assert inside > 0.9, (m.key, inside)
