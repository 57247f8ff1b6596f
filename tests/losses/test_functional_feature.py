"""attention_transfer / rkd / pkt / hint_mse / feature_cosine against direct loop implementations of the papers."""

import itertools
import math

import pytest
import torch

from lit_distill.losses import functional as LF


def rows(x):
    return [[float(v) for v in r] for r in x.double().flatten(1)]


def ref_attention(s, t, p=2.0):
    """Zagoruyko & Komodakis: q = Σ_c |A_c|^p per position, L2-normalised; squared distance, batch mean."""

    def maps(a):
        out = []
        for sample in a.double():
            q = [
                sum(abs(float(sample[c].flatten()[k])) ** p for c in range(sample.shape[0]))
                for k in range(sample[0].numel())
            ]
            n = math.sqrt(sum(v * v for v in q))
            out.append([v / n for v in q])
        return out

    return sum(sum((a - b) ** 2 for a, b in zip(qs, qt)) for qs, qt in zip(maps(s), maps(t))) / s.shape[0]


def huber(a, b):
    d = abs(a - b)
    return 0.5 * d * d if d < 1 else d - 0.5


def ref_rkd(s, t, wd=25.0, wa=50.0):
    """Park et al.: ψ_D = ‖x_i − x_j‖/μ over i≠j; ψ_A = cos of the angle at x_j; Huber(δ=1), means."""
    xs, xt = rows(s), rows(t)
    n = len(xs)

    def dist(x, i, j):
        return math.sqrt(sum((a - b) ** 2 for a, b in zip(x[i], x[j])))

    def cos_at(x, i, j, k):
        u = [a - b for a, b in zip(x[i], x[j])]
        v = [a - b for a, b in zip(x[k], x[j])]
        return sum(a * b for a, b in zip(u, v)) / (math.sqrt(sum(a * a for a in u)) * math.sqrt(sum(b * b for b in v)))

    pairs = [(i, j) for i in range(n) for j in range(n) if i != j]
    mu_s = sum(dist(xs, i, j) for i, j in pairs) / len(pairs)
    mu_t = sum(dist(xt, i, j) for i, j in pairs) / len(pairs)
    ld = sum(huber(dist(xs, i, j) / mu_s, dist(xt, i, j) / mu_t) for i, j in pairs) / len(pairs)
    triplets = list(itertools.permutations(range(n), 3))
    la = sum(huber(cos_at(xs, i, j, k), cos_at(xt, i, j, k)) for i, j, k in triplets) / len(triplets)
    return wd * ld + wa * la


def ref_pkt(s, t, eps=1e-7):
    """Passalis & Tefas: K = (cos + 1)/2, p_{j|i} = K_ij / Σ_{k≠i} K_ik, KL summed over j≠i, mean over i."""

    def cond(x):
        n = len(x)
        norm = [math.sqrt(sum(v * v for v in r)) for r in x]
        k = [
            [(sum(a * b for a, b in zip(x[i], x[j])) / (norm[i] * norm[j]) + 1) / 2 for j in range(n)] for i in range(n)
        ]
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


CASES = {
    "attention": (lambda s, t: LF.attention_transfer(s, t), ref_attention, ((3, 4, 3, 3), (3, 6, 3, 3))),
    "attention_p3": (
        lambda s, t: LF.attention_transfer(s, t, p=3),
        lambda s, t: ref_attention(s, t, 3.0),
        ((2, 2, 2, 3), (2, 5, 2, 3)),
    ),
    "rkd": (lambda s, t: LF.rkd(s, t), ref_rkd, ((6, 3), (6, 5))),
    "rkd_weights": (lambda s, t: LF.rkd(s, t, 1.0, 0.0), lambda s, t: ref_rkd(s, t, 1.0, 0.0), ((5, 2, 2), (5, 7))),
    "pkt": (lambda s, t: LF.pkt(s, t), ref_pkt, ((6, 4), (6, 9))),
    "hint_mse": (lambda s, t: LF.hint_mse(s, t), ref_mse, ((3, 4, 5), (3, 4, 5))),
    "cosine": (lambda s, t: LF.feature_cosine(s, t), ref_cosine, ((3, 4, 5), (3, 4, 5))),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_matches_direct_formula_fp32(case):
    fn, ref, shapes = CASES[case]
    s, t = make(0, *shapes)
    got = fn(s, t)
    assert got.dtype == torch.float32 and got.shape == ()
    assert got.item() == pytest.approx(ref(s, t), rel=1e-4, abs=1e-6)


@pytest.mark.parametrize("case", sorted(CASES))
def test_bf16_inputs_match_formula_on_the_same_values(case):
    fn, ref, shapes = CASES[case]
    s, t = make(1, *shapes, dtype=torch.bfloat16)
    got = fn(s, t)
    # bf16 inputs are upcast before any reduction, so the result is the formula on the bf16 values.
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(ref(s.float(), t.float()), rel=1e-4, abs=1e-6)


@pytest.mark.parametrize("case", sorted(CASES))
def test_gradcheck_float64(case):
    fn, _, shapes = CASES[case]
    s, t = (x.requires_grad_() for x in make(2, *shapes, dtype=torch.float64))
    assert torch.autograd.gradcheck(fn, (s, t), eps=1e-6, atol=1e-5)


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


def test_tiny_batches_give_zero_and_still_backprop():
    s = torch.randn(2, 4, requires_grad=True)
    _, angle = LF.rkd_terms(s, torch.randn(2, 3))
    assert angle.item() == 0.0  # two samples form no triplet
    single = torch.randn(1, 4, requires_grad=True)
    total = LF.rkd(single, torch.randn(1, 3)) + LF.pkt(single, torch.randn(1, 3))
    total.backward()
    assert total.item() == 0.0 and torch.isfinite(single.grad).all()


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
    with pytest.raises(ValueError, match="adapter"):
        LF.hint_mse(torch.randn(2, 3), torch.randn(2, 4))
