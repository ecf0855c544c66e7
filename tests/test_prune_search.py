"""Criteria clustering and blended-criterion search (Blending Pruning Criteria, He et al. 2021): rank correlations
and clusters on synthetic score tables, normalisations, BlendedCriterion, and the evolutionary search."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.stats import spearmanr

from leancnn.errors import LeancnnError
from leancnn.prune.blend import BlendedCriterion, depth_buckets
from leancnn.prune.cluster import cluster_criteria, correlations, plot_correlations
from leancnn.prune.normalise import normalise_scores
from leancnn.prune.search import BlendSpace, evolve, project_simplex, seed_population

CRITERIA = ["l1", "l2", "fpgm", "bn", "taylor", "random"]
W_STAR = np.array([0.6, 0.3, 0.1, 0.0])


def synthetic_scores(n_groups: int = 8, seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
    """l1, l2, fpgm: monotone transforms of one vector plus tiny noise; bn, taylor, random: independent."""
    rng = np.random.default_rng(seed)
    out = {}
    for i in range(n_groups):
        n = 32 + 16 * (i % 4)
        v = rng.uniform(0.5, 2.0, n)
        out[f"layer{i}.conv"] = {
            "l1": v + rng.normal(0, 1e-4, n),
            "l2": v ** 2 + rng.normal(0, 1e-4, n),
            "fpgm": np.log(v) + rng.normal(0, 1e-4, n),
            "bn": rng.uniform(0, 1, n),
            "taylor": rng.exponential(1.0, n),
            "random": rng.normal(0, 1, n),
        }
    return out


def planted(w: np.ndarray) -> float:
    return -float(np.sum((w - W_STAR) ** 2))


# ---------------------------------------------------------------------------------------------- correlations


@pytest.mark.parametrize("method", ["spearman", "kendall"])
def test_correlations_per_group_and_mean(method):
    scores = synthetic_scores()
    cor = correlations(scores, method=method)
    assert cor.criteria == tuple(CRITERIA) and len(cor.per_group) == 8
    i, j = CRITERIA.index("l1"), CRITERIA.index("fpgm")
    for m in cor.per_group.values():
        assert m.shape == (6, 6) and np.allclose(np.diag(m), 1) and np.allclose(m, m.T)
        assert m[i, j] > 0.9
    assert cor.mean[i, j] > 0.9 and abs(cor.mean[CRITERIA.index("taylor"), CRITERIA.index("random")]) < 0.3
    weighted = correlations(scores, method=method, weighted=True)
    assert weighted.weighted and weighted.mean.shape == (6, 6) and not np.allclose(weighted.mean, cor.mean)
    assert not cor.notes
    json.dumps(cor.to_dict())


def test_constant_criterion_is_zero_with_a_note():
    scores = synthetic_scores(3)
    scores["layer1.conv"]["bn"] = np.ones_like(scores["layer1.conv"]["bn"])
    cor = correlations(scores)
    m = cor.per_group["layer1.conv"]
    b = CRITERIA.index("bn")
    assert m[b, b] == 1 and np.all(np.delete(m[b], b) == 0)
    assert cor.constant == {"bn": ["layer1.conv"]}
    assert any("bn is constant in 1 of 3" in note for note in cor.notes)


@pytest.mark.parametrize("method", ["spearman", "kendall"])
def test_clusters_norm_criteria_together(method):
    res = cluster_criteria(synthetic_scores(), threshold=0.9, method=method)
    assert res.clusters == [("l1", "l2", "fpgm"), ("bn",), ("taylor",), ("random",)]
    for lay in res.layers.values():
        assert lay.clusters == res.clusters
    assert res.together(["l1", "l2", "fpgm"]) == 8 and res.together(["l1", "taylor"]) == 0
    assert res.co_occurrence[0, 1] == 8 and res.co_occurrence[0, 4] == 0
    assert "l1, l2, fpgm together in 8 of 8 layers" in res.summary()
    assert res.representatives[1:] == ["bn", "taylor", "random"]
    assert res.representatives[0] in ("l1", "l2", "fpgm") and len(res.candidates()) == 4
    assert len(res.candidates(per_cluster=2)) == 5
    json.dumps(res.to_dict())


def test_representative_rules_and_network_only():
    scores = synthetic_scores(4)
    assert cluster_criteria(scores, representative="first").representatives[0] == "l1"
    assert cluster_criteria(scores, representative=["fpgm", "l2"]).representatives[0] == "fpgm"
    assert cluster_criteria(scores, representative="central").representatives[0] in ("l1", "l2", "fpgm")
    res = cluster_criteria(scores, per_layer=False, linkage="complete")
    assert not res.layers and res.co_occurrence is None and len(res.clusters) == 4
    # at threshold 1 only identical rankings merge; at -1 everything merges
    strict = cluster_criteria(scores, threshold=1.0, per_layer=False)
    for members in strict.clusters:
        idx = [CRITERIA.index(c) for c in members]
        assert np.allclose(strict.correlations.mean[np.ix_(idx, idx)], 1.0)
    assert len(strict.clusters) >= 5
    assert len(cluster_criteria(scores, threshold=-1.0, per_layer=False).clusters) == 1


@pytest.mark.slow
def test_heatmap_png(tmp_path):
    res = cluster_criteria(synthetic_scores(5))
    path = plot_correlations(res, tmp_path / "corr.png")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    net = cluster_criteria(synthetic_scores(3), per_layer=False)
    assert plot_correlations(net, tmp_path / "net.png", layers=[0, "layer2.conv"]).stat().st_size > 0
    assert plot_correlations(net, tmp_path / "only.png", layers=[]).stat().st_size > 0


def test_cluster_bad_input():
    scores = synthetic_scores(2)
    with pytest.raises(LeancnnError, match="correlation method"):
        correlations(scores, method="pearsonish")
    with pytest.raises(LeancnnError, match="linkage"):
        cluster_criteria(scores, linkage="ward")
    with pytest.raises(LeancnnError, match="representative"):
        cluster_criteria(scores, representative="best")
    with pytest.raises(LeancnnError, match="unknown criteria"):
        cluster_criteria(scores, representative=["l9"])
    del scores["layer1.conv"]["taylor"]
    with pytest.raises(LeancnnError, match="missing \\['taylor'\\]"):
        correlations(scores)
    with pytest.raises(LeancnnError, match="non-finite"):
        correlations({"g": {"a": np.array([1.0, np.nan]), "b": np.array([1.0, 2.0])}})
    with pytest.raises(LeancnnError, match="has 3 scores"):
        correlations({"g": {"a": np.arange(2.0), "b": np.arange(3.0)}})


# ---------------------------------------------------------------------------------------------- blended criterion


def test_normalisations():
    r = normalise_scores([3.0, 1.0, 3.0, 2.0], "rank")
    assert np.allclose(r, [2.5 / 3, 0.0, 2.5 / 3, 1 / 3])
    assert np.allclose(normalise_scores([2.0, 4.0, 3.0], "scale"), [0, 1, 0.5])
    z = normalise_scores([1.0, 2.0, 3.0], "zscore")
    assert abs(z.mean()) < 1e-12 and abs(z.std() - 1) < 1e-12
    for method, value in (("rank", 0.5), ("scale", 0.5), ("zscore", 0.0)):
        assert np.all(normalise_scores(np.full(5, 7.0), method) == value)
        assert np.all(normalise_scores([4.0], method) == value)
    with pytest.raises(LeancnnError, match="unknown normalisation 'minmax'"):
        normalise_scores([1.0, 2.0], "minmax")


def test_one_hot_blend_reproduces_criterion_and_round_trips():
    scores = synthetic_scores(4)
    for target in ("taylor", "bn"):
        crit = BlendedCriterion(CRITERIA, [1.0 if c == target else 0.0 for c in CRITERIA], name=f"only-{target}")
        assert crit.active == (target,)
        out = crit.blend({g: {target: t[target]} for g, t in scores.items()})  # inactive criteria not needed
        for g, s in out.items():
            assert np.array_equal(np.argsort(s, kind="stable"), np.argsort(scores[g][target], kind="stable"))
    crit = BlendedCriterion(["l1", "taylor", "bn"], [2.0, 1.0, 1.0], normalise="scale", name="mix",
                            clusters=[["l1", "l2", "fpgm"], ["taylor"], ["bn"]])
    assert np.allclose(crit.weights, [[0.5, 0.25, 0.25]])
    text = crit.describe()
    assert "0.500·l1" in text and "l1 from {l1, l2, fpgm}" in text
    back = BlendedCriterion.from_dict(json.loads(json.dumps(crit.to_dict())))
    assert back == crit and back.describe() == text
    for g, s in crit.blend(scores).items():
        assert np.allclose(s, back.blend(scores)[g])


def test_per_cluster_weights_and_buckets():
    crit = BlendedCriterion(None, [{"l1": 3.0, "l2": 1.0}, {"taylor": 5.0}], cluster_weights=[0.8, 0.2])
    assert crit.criteria == ("l1", "l2", "taylor") and np.allclose(crit.weights, [[0.6, 0.2, 0.2]])
    assert crit.clusters == [("l1", "l2"), ("taylor",)] and "share 0.800; calibration l1 75%, l2 25%" in \
        crit.describe()
    groups = [f"g{i}" for i in range(5)]
    assert list(depth_buckets(groups, 2).values()) == [0, 0, 0, 1, 1]
    scores = synthetic_scores(5)
    two = BlendedCriterion(["l1", "taylor"], [[1, 0], [0, 1]])
    out = two.blend(scores)
    first, last = list(scores)[0], list(scores)[-1]
    assert np.allclose(out[first], normalise_scores(scores[first]["l1"]))
    assert np.allclose(out[last], normalise_scores(scores[last]["taylor"]))
    # a subset keeps its buckets when the full network order is given
    sub = two.blend({last: scores[last]}, order=list(scores))
    assert np.allclose(sub[last], out[last])
    assert BlendedCriterion.from_dict(json.loads(json.dumps(two.to_dict()))) == two


def test_blend_bad_input():
    with pytest.raises(LeancnnError, match="must be >= 0"):
        BlendedCriterion(["l1", "l2"], [0.5, -0.1])
    with pytest.raises(LeancnnError, match="unknown normalisation"):
        BlendedCriterion(["l1", "l2"], [0.5, 0.5], normalise="softmax")
    with pytest.raises(LeancnnError, match="positive sum"):
        BlendedCriterion(["l1", "l2"], [0.0, 0.0])
    with pytest.raises(LeancnnError, match="2 entries"):
        BlendedCriterion(["l1", "l2"], [1.0, 1.0, 1.0])
    with pytest.raises(LeancnnError, match="no scores for criterion 'taylor'"):
        BlendedCriterion(["l1", "taylor"], [0.5, 0.5]).blend({"g": {"l1": np.arange(3.0)}})
    with pytest.raises(LeancnnError, match="unknown keys"):
        BlendedCriterion.from_dict({"criteria": ["a"], "weights": [1], "alpha": 2})


# ---------------------------------------------------------------------------------------------- search


def test_ea_finds_planted_optimum_and_is_deterministic():
    a = evolve(planted, 4, population=16, generations=20, seed=3, init=seed_population(4))
    assert np.linalg.norm(a.best_genome - W_STAR) < 0.05
    assert len(a.history) == 21 and a.history[-1]["evaluations"] == a.evaluations
    assert all(h1["best"] >= h0["best"] for h0, h1 in zip(a.history, a.history[1:]))
    b = evolve(planted, 4, population=16, generations=20, seed=3, init=seed_population(4))
    assert np.array_equal(a.best_genome, b.best_genome) and a.history == b.history
    c = evolve(planted, 4, population=16, generations=20, seed=4, crossover="uniform", selection="comma")
    assert np.linalg.norm(c.best_genome - W_STAR) < 0.05
    json.dumps(a.to_dict())


def test_ea_caches_repeated_genomes():
    calls = []

    def counted(w):
        calls.append(w)
        return planted(np.pad(w, (0, 4 - w.size)))

    res = evolve(counted, 1, population=4, generations=3)  # the 1-gene simplex has one point
    assert len(calls) == 1 and res.evaluations == 1 and res.history[-1]["evaluations"] == 1
    calls.clear()
    res = evolve(counted, 4, population=8, generations=5, init=[W_STAR, W_STAR * 2, W_STAR])
    keys = {tuple(np.round(g, 4)) for g in calls}
    assert len(calls) == len(keys) == res.evaluations <= 8 + 5 * 8
    calls.clear()
    evolve(counted, 4, population=8, generations=0, init=[W_STAR, W_STAR], cache=False)
    assert len(calls) == 8


def test_ea_parallel_matches_sequential():
    one = evolve(planted, 4, population=8, generations=4, seed=7)
    two = evolve(planted, 4, population=8, generations=4, seed=7, workers=2)
    assert np.array_equal(one.best_genome, two.best_genome) and one.history == two.history
    assert [f for _, f in one.evaluated] == [f for _, f in two.evaluated]
    target = np.array([0.25, 0.25, 0.5])
    closure = evolve(lambda w: -float(np.abs(w - target).sum()), 3, population=6, generations=2, workers=2)
    assert closure.evaluations > 6


def test_seeded_search_is_never_worse_than_single_criteria():
    """End to end on synthetic scores: cluster, take the representatives, search a blend agreeing with a hidden
    importance; the corners are evaluated first, so the result beats or ties every single candidate."""
    scores = synthetic_scores(6, seed=1)
    rng = np.random.default_rng(5)
    truth = {g: 0.7 * normalise_scores(t["taylor"]) + 0.3 * normalise_scores(t["l2"]) + rng.normal(0, 0.05, t["l1"]
             .size) for g, t in scores.items()}
    space = BlendSpace(tuple(cluster_criteria(scores).candidates()), buckets=2)
    assert space.n_params == 8

    def agreement(genome):
        blended = space.criterion(genome).blend(scores)
        return float(np.mean([spearmanr(blended[g], truth[g]).statistic for g in scores]))

    init = space.seed_population()
    res = evolve(agreement, space.n_params, population=10, generations=3, blocks=space.blocks, init=init)
    singles = [agreement(g) for g in init[:4]]
    assert res.best_fitness >= max(singles)
    best = space.criterion(res.best_genome, name="best")
    assert np.allclose(space.genome(best), project_simplex(res.best_genome, 2))
    assert best.weight_of("taylor") > 0.3 and "taylor" in best.describe()


def test_ea_bad_input():
    with pytest.raises(LeancnnError, match="population must be"):
        evolve(planted, 4, population=1)
    with pytest.raises(LeancnnError, match="elitism"):
        evolve(planted, 4, population=4, elitism=4)
    with pytest.raises(LeancnnError, match="crossover"):
        evolve(planted, 4, crossover="one-point")
    with pytest.raises(LeancnnError, match="init has 3 genomes"):
        evolve(planted, 4, population=2, elitism=1, init=[W_STAR] * 3)
    with pytest.raises(LeancnnError, match=">= 0"):
        evolve(planted, 4, init=[[0.5, -0.5, 1, 0]])
    with pytest.raises(LeancnnError, match="dividing"):
        evolve(planted, 4, blocks=3)
    with pytest.raises(LeancnnError, match="mutation_rate"):
        evolve(planted, 4, mutation_rate=1.5)
