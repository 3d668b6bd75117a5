"""Figures: per-seed statistics drawn from the data, files written without dates."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from qdgs_lib import claims, plots  # noqa: E402


def _results():
    rows = [{"bias": b, "seed": s, "finetune": f, "mean": 0.5 + 0.1 * k + 0.02 * s + 0.1 * b}
            for b in (0.9, 0.8) for s in range(3) for k, f in enumerate(("none", "qdgs"))]
    return pd.DataFrame(rows)


def test_seed_points_draw_every_seed_and_the_t_interval():
    res = _results()
    fig, ax = plt.subplots()
    plots.seed_points(res, x="bias", y="mean", hue="finetune", ax=ax, order=[0.9, 0.8],
                      hue_order=["none", "qdgs"], labels={"qdgs": "+ QDGS"}, title="t")
    seeds = np.concatenate([np.asarray(c.get_offsets())[:, 1] for c in ax.collections])
    assert np.sort(seeds) == pytest.approx(np.sort(res["mean"].to_numpy()))  # every seed
    means = np.concatenate([np.asarray(line.get_ydata(), float) for line in ax.lines
                            if line.get_marker() == "D"])
    groups = res.groupby(["bias", "finetune"])["mean"]
    assert np.sort(means) == pytest.approx(np.sort(groups.mean().to_numpy()))
    # each error bar spans the t-interval of claims.mean_ci
    bars = [np.asarray(line.get_ydata(), float) for line in ax.lines if line.get_marker() != "D"
            and len(line.get_ydata())]
    spans = sorted((round(np.nanmin(y), 6), round(np.nanmax(y), 6)) for y in bars)
    want = sorted(tuple(round(v, 6) for v in claims.mean_ci(g)[1:]) for _, g in groups)
    assert spans == want
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["none", "+ QDGS"]
    plt.close(fig)


def test_pdfs_have_no_creation_date(tmp_path):
    fig, ax = plt.subplots()
    ax.plot([0, 1])
    a = plots.savefig(fig, tmp_path / "a")
    plots.savefig(fig, tmp_path / "b")
    assert (tmp_path / "a.pdf").read_bytes() == (tmp_path / "b.pdf").read_bytes()
    assert b"CreationDate" not in (tmp_path / "a.pdf").read_bytes()
    assert len(a) == 2
    plt.close(fig)


def test_savefig_keeps_dotted_names_apart(tmp_path):
    import matplotlib.pyplot as plt

    from qdgs_lib.plots import savefig

    fig = plt.figure()
    a = savefig(fig, tmp_path / "accuracy_bias_0.9", pdf=False)
    b = savefig(fig, tmp_path / "accuracy_bias_0.8.png", pdf=False)
    plt.close(fig)
    assert [p.name for p in a + b] == ["accuracy_bias_0.9.png", "accuracy_bias_0.8.png"]
    assert all(p.exists() for p in a + b)


def test_atomic_dir_follows_the_umask_and_replaces_safely(tmp_path):
    import os

    from qdgs_lib.utils import _UMASK, atomic_dir

    with atomic_dir(tmp_path / "d") as tmp:
        (tmp / "new.txt").write_text("1")
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o777 & ~_UMASK
    with pytest.raises(RuntimeError):  # a failed rewrite keeps the old folder
        with atomic_dir(tmp_path / "d") as tmp:
            (tmp / "other.txt").write_text("2")
            raise RuntimeError
    with atomic_dir(tmp_path / "d") as tmp:
        (tmp / "third.txt").write_text("3")
    assert os.listdir(tmp_path / "d") == ["third.txt"]
    assert sorted(os.listdir(tmp_path)) == ["d"]  # nothing left aside


def test_figures_name_their_source_and_label_their_colour_scale(tmp_path):
    from PIL import Image
    from ribs.archives import GridArchive

    archive = GridArchive(solution_dim=2, dims=[4, 4], ranges=[(-1, 1), (-1, 1)])
    assert plots.shared_vmax([archive]) is None   # empty archives have no scale
    archive.add(np.zeros((2, 2)), np.array([1.0, 3.0]), np.array([[0.1, 0.1], [0.6, -0.6]]))
    assert plots.shared_vmax([archive, GridArchive(solution_dim=2, dims=[2, 2],
                                                   ranges=[(-1, 1)] * 2)]) == 3.0
    fig, ax = plt.subplots()
    plots.heatmap(archive, ax=ax, cbar_label="best objective")
    assert fig.axes[-1].get_ylabel() == "best objective"   # the colour bar's axes

    def height(footer):
        plots.set_footer(footer)
        f, a = plt.subplots(figsize=(3, 2))
        a.plot([0, 1])
        path = plots.savefig(f, tmp_path / f"f{footer is None}", pdf=False)[0]
        plt.close(f)
        return Image.open(path).size[1], f

    plain, _ = height(None)
    footed, f = height("qdgs - profile default: toy world")
    assert footed > plain   # the footer lies below the content, inside the saved image
    assert "qdgs - profile default: toy world" in [t.get_text() for t in f.texts]


def test_latent_norms_and_training_curves_take_edge_cases():
    fig, ax = plt.subplots()
    plots.latent_norms({"QDGS elites": np.array([]), "prior": np.full(5, 2.0)}, 1.0, ax=ax)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["prior"]
    logs = pd.DataFrame({"pretraining": ["none"] * 4, "seed": [0, 0, 1, 1],
                         "stage": ["real"] * 4, "epoch": [0, 1, 0, 1],
                         "loss": [3.0, 2.0, 5.0, 4.0], "train_acc": [0.1, 0.2, 0.3, 0.4]})
    axes = plots.training_curves(logs)
    assert axes[0].lines[0].get_ydata().tolist() == [4.0, 3.0]    # mean over the 2 seeds
    assert "2 seed(s)" in axes[0].get_title()
    plt.close("all")


def test_each_arm_has_one_colour_in_every_figure():
    """QDGS, random sampling and no synthetic data keep their colours from figure to figure
    (notebook 03's curves and notebook 04's points once showed QDGS and random swapped)."""
    from matplotlib.colors import to_rgb

    qdgs, rand, none = (plots.arm_color(n) for n in ("qdgs", "random", "none"))
    assert len({qdgs, rand, none}) == 3 and plots.arm_color("something else") is None
    assert plots.arm_color("+ QDGS synthetic") == plots.arm_color("QDGS elites") == qdgs
    assert plots.arm_color("random-sampling elites") == rand
    assert plots.arm_color("biased only") == plots.arm_color("prior samples") == none
    rows = [{"arm": a, "seed": s, "acc": 0.5 + 0.1 * s + 0.01 * k}
            for k, a in enumerate(("none", "random", "qdgs")) for s in range(3)]
    for order in (["none", "random", "qdgs"], ["qdgs", "none", "random"]):
        fig, ax = plt.subplots()
        plots.seed_points(pd.DataFrame(rows), x="seed", y="acc", hue="arm", ax=ax,
                          hue_order=order, labels={"qdgs": "+ QDGS synthetic"})
        legend = {t.get_text(): to_rgb(h.get_color() if hasattr(h, "get_color")
                                       else h.get_facecolor()[0])
                  for t, h in zip(ax.get_legend().get_texts(), ax.get_legend().legend_handles,
                                  strict=True)}
        assert legend == {"none": none, "random": rand, "+ QDGS synthetic": qdgs}, order
        plt.close(fig)
    # levels that are not arms never take an arm's colour; hue_order may be an Index
    other = pd.DataFrame([{"arm": a, "seed": s, "acc": 0.5} for a in ("baseline", "qdgs")
                          for s in range(2)])
    fig, ax = plt.subplots()
    plots.seed_points(other, x="seed", y="acc", hue="arm", ax=ax,
                      hue_order=pd.Index(["baseline", "qdgs"]))
    handles = ax.get_legend().legend_handles
    colours = [to_rgb(h.get_color() if hasattr(h, "get_color") else h.get_facecolor()[0])
               for h in handles]
    assert colours[1] == qdgs and colours[0] not in (qdgs, rand, none)
    plt.close(fig)
    logs = pd.DataFrame([{"pretraining": a, "stage": "real", "seed": 0, "epoch": e,
                          "loss": 1.0 / (e + 1), "train_acc": 0.1 * e}
                         for a in ("none", "qdgs", "random") for e in range(3)])
    axes = plots.training_curves(logs)
    colours = {line.get_label().split(" ")[0]: to_rgb(line.get_color())
               for line in axes[0].get_lines()}
    assert colours == {"none": none, "qdgs": qdgs, "random": rand}
    plt.close("all")
