"""attention_transfer / rkd / pkt / hint_mse / feature_cosine against direct loop implementations.

AT, RKD and PKT have two references each: the reduction of the authors' released code (the default,
``"mean"``), written here from what that code computes, and the earlier ``"batchmean"``/``"pairs"`` one.
"""

import itertools
import math

import pytest
import torch

from lit_distill.losses import functional as LF


def rows(x):
    return [[float(v) for v in r] for r in x.double().flatten(1)]


def attention_maps(a, p):
    """Per sample: q_n = Σ_c |A_c[n]|^p over the positions n, divided by its L2 norm."""
    out = []
    for sample in a.double():
        flat = sample.flatten(1)
        q = [sum(abs(float(flat[c, k])) ** p for c in range(flat.shape[0])) for k in range(flat.shape[1])]
        norm = math.sqrt(sum(v * v for v in q))
        out.append([v / norm for v in q])
    return out


def ref_attention_code(s, t, p=2.0):
    """szagoruyko/attention-transfer ``at_loss``: squared map difference averaged over batch and positions."""
    qs, qt = attention_maps(s, p), attention_maps(t, p)
    terms = [(a - b) ** 2 for ms, mt in zip(qs, qt) for a, b in zip(ms, mt)]
    return sum(terms) / len(terms)


def ref_attention_batchmean(s, t, p=2.0):
    """Squared L2 distance of the maps per sample, mean over the batch."""
    qs, qt = attention_maps(s, p), attention_maps(t, p)
    return sum(sum((a - b) ** 2 for a, b in zip(ms, mt)) for ms, mt in zip(qs, qt)) / len(qs)


def huber(a, b):
    d = abs(a - b)
    return 0.5 * d * d if d < 1 else d - 0.5


def sub(u, v):
    return [a - b for a, b in zip(u, v)]


def norm(u):
    return math.sqrt(sum(a * a for a in u))


def unit(u):
    n = norm(u)
    return [a / n for a in u] if n > 0 else [0.0] * len(u)


def dot(u, v):
    return sum(a * b for a, b in zip(u, v))


def ref_rkd_code(s, t, wd=25.0, wa=50.0):
    """lenscloth/RKD ``RkdDistance`` + ``RKdAngle``: Huber(δ=1) averaged over all B² distances (0 on the diagonal,
    scaled by the mean of the nonzero ones) and all B³ angles ``<unit(x_j − x_i), unit(x_k − x_i)>``."""
    xs, xt = rows(s), rows(t)
    n = len(xs)

    def distances(x):
        d = [[norm(sub(x[i], x[j])) for j in range(n)] for i in range(n)]
        positive = [v for r in d for v in r if v > 0]
        mu = sum(positive) / len(positive)
        return [[v / mu for v in r] for r in d]

    def angles(x):
        return [dot(unit(sub(x[j], x[i])), unit(sub(x[k], x[i]))) for i, j, k in itertools.product(range(n), repeat=3)]

    ds, dt = distances(xs), distances(xt)
    ld = sum(huber(ds[i][j], dt[i][j]) for i in range(n) for j in range(n)) / n**2
    la = sum(huber(a, b) for a, b in zip(angles(xs), angles(xt))) / n**3
    return wd * ld + wa * la


def ref_rkd_pairs(s, t, wd=25.0, wa=50.0):
    """Park et al.: ψ_D = ‖x_i − x_j‖/μ over i≠j; ψ_A = cos of the angle at x_j; means over distinct tuples."""
    xs, xt = rows(s), rows(t)
    n = len(xs)

    def dist(x, i, j):
        return norm(sub(x[i], x[j]))

    def cos_at(x, i, j, k):
        return dot(unit(sub(x[i], x[j])), unit(sub(x[k], x[j])))

    pairs = [(i, j) for i in range(n) for j in range(n) if i != j]
    ld = la = 0.0
    if pairs:
        mu_s = sum(dist(xs, i, j) for i, j in pairs) / len(pairs)
        mu_t = sum(dist(xt, i, j) for i, j in pairs) / len(pairs)
        ld = sum(huber(dist(xs, i, j) / mu_s, dist(xt, i, j) / mu_t) for i, j in pairs) / len(pairs)
    triplets = list(itertools.permutations(range(n), 3))
    if triplets:
        la = sum(huber(cos_at(xs, i, j, k), cos_at(xt, i, j, k)) for i, j, k in triplets) / len(triplets)
    return wd * ld + wa * la


def ref_pkt_code(s, t, eps=1e-7):
    """passalis/probabilistic_kt ``cosine_similarity_loss``: x/(‖x‖+ε), K = (cos + 1)/2 with the diagonal,
    rows normalised, ``p_t·log((p_t+ε)/(p_s+ε))`` averaged over all B² entries."""

    def cond(x):
        x = [[a / (norm(r) + eps) for a in r] for r in x]
        k = [[(dot(u, v) + 1) / 2 for v in x] for u in x]
        return [[v / sum(r) for v in r] for r in k]

    ps, pt = cond(rows(s)), cond(rows(t))
    n = len(ps)
    return sum(pt[i][j] * math.log((pt[i][j] + eps) / (ps[i][j] + eps)) for i in range(n) for j in range(n)) / n**2


def ref_pkt_pairs(s, t, eps=1e-7):
    """Passalis & Tefas: K = (cos + 1)/2, p_{j|i} = K_ij / Σ_{k≠i} K_ik, KL summed over j≠i, mean over i."""

    def cond(x):
        n = len(x)
        k = [[(dot(x[i], x[j]) / (norm(x[i]) * norm(x[j])) + 1) / 2 for j in range(n)] for i in range(n)]
        return [
            [k[i][j] / sum(k[i][m] for m in range(n) if m != i) if j != i else 0.0 for j in range(n)] for i in range(n)
        ]

    ps, pt = cond(rows(s)), cond(rows(t))
    n = len(ps)
    return (
        sum(pt[i][j] * math.log((pt[i][j] + eps) / (ps[i][j] + eps)) for i in range(n) for j in range(n) if j != i) / n
    )


def ref_mse(s, t):
    a, b = s.double().flatten().tolist(), t.double().flatten().tolist()
    return sum((x - y) ** 2 for x, y in zip(a, b)) / len(a)


def ref_cosine(s, t):
    vs, vt = s.double().reshape(-1, s.shape[-1]).tolist(), t.double().reshape(-1, t.shape[-1]).tolist()
    out = [
        1 - sum(a * b for a, b in zip(u, v)) / math.sqrt(sum(a * a for a in u) * sum(b * b for b in v))
        for u, v in zip(vs, vt)
    ]
    return sum(out) / len(out)


def make(seed, *shapes, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, generator=g).to(dtype) for shape in shapes]


ISSUE_MAPS = ((8, 16, 6, 6), (8, 32, 6, 6))  # the shapes of issue 19
ISSUE_EMBEDDINGS = ((8, 24), (8, 48))
#: name -> (our function, direct reference, [(student shape, teacher shape), ...]); the last shapes are gradchecked
CASES = {
    "attention": (
        LF.attention_transfer,
        ref_attention_code,
        [ISSUE_MAPS, ((1, 3, 4, 4), (1, 5, 4, 4)), ((3, 4, 3, 5), (3, 6, 3, 5)), ((2, 2, 3, 2, 2), (2, 3, 3, 2, 2))],
    ),
    "attention_p3": (
        lambda s, t: LF.attention_transfer(s, t, p=3),
        lambda s, t: ref_attention_code(s, t, 3.0),
        [((2, 2, 2, 3), (2, 5, 2, 3))],
    ),
    "attention_batchmean": (
        lambda s, t: LF.attention_transfer(s, t, reduction="batchmean"),
        ref_attention_batchmean,
        [ISSUE_MAPS, ((3, 4, 3, 5), (3, 6, 3, 5))],
    ),
    "rkd": (LF.rkd, ref_rkd_code, [ISSUE_EMBEDDINGS, ((2, 3), (2, 5)), ((3, 4), (3, 2)), ((6, 3), (6, 5))]),
    "rkd_weights": (
        lambda s, t: LF.rkd(s, t, 1.0, 2.0),
        lambda s, t: ref_rkd_code(s, t, 1.0, 2.0),
        [((5, 2, 2), (5, 7))],
    ),
    "rkd_pairs": (
        lambda s, t: LF.rkd(s, t, reduction="pairs"),
        ref_rkd_pairs,
        [ISSUE_EMBEDDINGS, ((3, 4), (3, 2)), ((6, 3), (6, 5))],
    ),
    "pkt": (LF.pkt, ref_pkt_code, [ISSUE_EMBEDDINGS, ((1, 4), (1, 6)), ((2, 3), (2, 5)), ((3, 4), (3, 9))]),
    "pkt_pairs": (lambda s, t: LF.pkt(s, t, reduction="pairs"), ref_pkt_pairs, [ISSUE_EMBEDDINGS, ((3, 4), (3, 9))]),
    "hint_mse": (LF.hint_mse, ref_mse, [((3, 4, 5), (3, 4, 5))]),
    "cosine": (LF.feature_cosine, ref_cosine, [((3, 4, 5), (3, 4, 5))]),
}
SHAPED = [(case, i) for case in sorted(CASES) for i in range(len(CASES[case][2]))]


@pytest.mark.parametrize(("case", "shape"), SHAPED)
def test_matches_direct_formula_float64(case, shape):
    fn, ref, shapes = CASES[case]
    s, t = make(shape, *shapes[shape], dtype=torch.float64)
    assert fn(s, t).item() == pytest.approx(ref(s, t), rel=1e-9, abs=1e-14)


@pytest.mark.parametrize(("case", "shape"), SHAPED)
def test_matches_direct_formula_fp32(case, shape):
    fn, ref, shapes = CASES[case]
    s, t = make(shape, *shapes[shape])
    got = fn(s, t)
    assert got.dtype == torch.float32 and got.shape == ()
    # fp32 rounding only: within 1e-5 on the issue's batch of 8; KL/Huber of near-equal tiny batches cancel more.
    rel = 1e-5 if s.shape[0] >= 8 else 2e-4
    assert got.item() == pytest.approx(ref(s, t), rel=rel, abs=1e-7)


@pytest.mark.parametrize(("case", "shape"), SHAPED)
def test_bf16_inputs_match_formula_on_the_same_values(case, shape):
    fn, ref, shapes = CASES[case]
    s, t = make(shape + 10, *shapes[shape], dtype=torch.bfloat16)
    got = fn(s, t)
    # bf16 inputs are upcast before any reduction, so the result is the formula on the bf16 values.
    assert got.dtype == torch.float32
    rel = 1e-5 if s.shape[0] >= 8 else 2e-4
    assert got.item() == pytest.approx(ref(s.float(), t.float()), rel=rel, abs=1e-7)


@pytest.mark.parametrize("case", sorted(CASES))
def test_gradcheck_float64(case):
    fn, _, shapes = CASES[case]
    s, t = (x.requires_grad_() for x in make(2, *shapes[-1], dtype=torch.float64))
    assert torch.autograd.gradcheck(fn, (s, t), eps=1e-6, atol=1e-5)


def test_earlier_reductions_are_fixed_multiples_of_the_default():
    s, t = make(7, *ISSUE_MAPS)
    h, w = s.shape[2:]
    assert LF.attention_transfer(s, t, reduction="batchmean").item() == pytest.approx(
        h * w * LF.attention_transfer(s, t).item(), rel=1e-5
    )
    b = 8
    e_s, e_t = make(8, *ISSUE_EMBEDDINGS)
    (d_mean, a_mean), (d_pairs, a_pairs) = LF.rkd_terms(e_s, e_t), LF.rkd_terms(e_s, e_t, "pairs")
    assert d_pairs.item() == pytest.approx(d_mean.item() * b / (b - 1), rel=1e-5)
    assert a_pairs.item() == pytest.approx(a_mean.item() * b**2 / ((b - 1) * (b - 2)), rel=1e-5)


def test_masks_skip_padding_rows():
    s, t = make(3, (2, 5, 4), (2, 5, 4))
    mask = torch.tensor([[True, True, False, True, False], [False, True, True, True, True]])
    assert LF.hint_mse(s, t, mask).item() == pytest.approx(ref_mse(s[mask], t[mask]), rel=1e-5)
    assert LF.feature_cosine(s, t, mask=mask).item() == pytest.approx(ref_cosine(s[mask], t[mask]), rel=1e-5)


def test_cosine_over_conv_channels():
    s, t = make(4, (2, 3, 4, 4), (2, 3, 4, 4))
    want = ref_cosine(s.movedim(1, -1), t.movedim(1, -1))
    assert LF.feature_cosine(s, t, dim=1).item() == pytest.approx(want, rel=1e-5)


def test_relations_ignore_width_and_scale():
    (e,) = make(5, (7, 6))
    assert LF.rkd(e, 4.0 * e).item() < 1e-9
    assert LF.pkt(e, 0.5 * e).item() < 1e-9
    (a,) = make(6, (2, 3, 4, 4))
    assert LF.attention_transfer(a, torch.cat([a, -a], dim=1)).item() < 1e-9
    assert LF.rkd(e, e.flip(0)).item() > 0.1  # but a different arrangement does count


@pytest.mark.parametrize("reduction", ["mean", "pairs"])
def test_batches_too_small_to_relate_give_zero_and_a_zero_gradient(reduction):
    # B = 1: no pair (the released RKD code returns NaN here), no neighbour for PKT.
    single, t1, t1_wide = make(9, (1, 4), (1, 3), (1, 5))
    single.requires_grad_()
    total = LF.rkd(single, t1, reduction=reduction) + LF.pkt(single, t1_wide, reduction=reduction)
    total.backward()
    assert total.item() == 0.0 and single.grad.abs().max() < 1e-6
    # B = 2: every triangle is degenerate, and the one distance is the mean distance on both sides.
    pair, t2 = make(10, (2, 4), (2, 3))
    pair.requires_grad_()
    distance, angle = LF.rkd_terms(pair, t2, reduction)
    (distance + angle).backward()
    assert abs(distance.item()) < 1e-6 and abs(angle.item()) < 1e-6 and pair.grad.abs().max() < 1e-5


def test_coincident_points_have_finite_gradients():
    s = torch.tensor([[1.0, 2.0], [1.0, 2.0], [0.0, 1.0], [3.0, -1.0]], requires_grad=True)
    LF.rkd(s, torch.randn(4, 3)).backward()
    assert torch.isfinite(s.grad).all()


def test_bad_inputs_name_the_problem():
    with pytest.raises(ValueError, match=r"spatial size \(4, 4\).*\(2, 2\)"):
        LF.attention_transfer(torch.randn(2, 3, 4, 4), torch.randn(2, 3, 2, 2))
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        LF.attention_transfer(torch.randn(2, 3), torch.randn(2, 3))
    with pytest.raises(ValueError, match="p must be"):
        LF.attention_transfer(torch.randn(2, 3, 2, 2), torch.randn(2, 3, 2, 2), p=0)
    with pytest.raises(ValueError, match="student batch 3 and teacher batch 4"):
        LF.rkd(torch.randn(3, 2), torch.randn(4, 2))
    with pytest.raises(ValueError, match="eps"):
        LF.pkt(torch.randn(3, 2), torch.randn(3, 2), eps=0)
    with pytest.raises(ValueError, match="angle_weight"):
        LF.rkd(torch.randn(3, 2), torch.randn(3, 2), angle_weight=-1)
    with pytest.raises(ValueError, match="reduction must be one of 'mean', 'batchmean', got 'sum'"):
        LF.attention_transfer(torch.randn(2, 3, 2, 2), torch.randn(2, 3, 2, 2), reduction="sum")
    with pytest.raises(ValueError, match="RKD: reduction must be one of 'mean', 'pairs', got 'batchmean'"):
        LF.rkd(torch.randn(3, 2), torch.randn(3, 2), reduction="batchmean")
    with pytest.raises(ValueError, match="PKT: reduction must be one of 'mean', 'pairs'"):
        LF.pkt(torch.randn(3, 2), torch.randn(3, 2), reduction="none")
    with pytest.raises(ValueError, match="adapter"):
        LF.hint_mse(torch.randn(2, 3), torch.randn(2, 4))
