"""The shipped faces CLIP measures what its prompts say (Spearman rho vs true attributes)."""

import pytest

from qdgs_lib import faces
from qdgs_lib.paths import weights_dir
from qdgs_lib.profiles import get_profile

RHO_MIN = 0.8  # every measure must rank renders like the true attribute does


@pytest.mark.skipif(not (weights_dir() / "qdgs-faces-clip.safetensors").exists(),
                    reason="faces CLIP weights not trained yet (scripts/train_clip.py)")
def test_faces_clip_measures_correlate_with_true_attributes():
    p = get_profile("default", "faces")
    scorer = faces.build_scorer(p)
    df = faces.measure_truth(scorer, n=384, seed=123)
    rho = faces.measure_correlations(df)
    print("Spearman rho:", rho)
    assert all(r > RHO_MIN for r in rho.values()), rho
    # the profile's archive ranges hold the bulk of the measures of balanced renders
    for k, (lo, hi) in enumerate(p["ranges"]):
        inside = df[f"measure_{k}"].between(lo, hi).mean()
        assert inside > 0.9, (k, inside)
