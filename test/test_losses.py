"""Losses against formulas written out here with numpy and loops, plus the properties every loss keeps:
ignored pixels change nothing, one-hot soft targets equal hard ones, gradients stay finite, and a
batch with nothing labelled gives 0."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from seg_ros.training.losses import (
    BalancedCrossEntropyLoss,
    CrossEntropyLoss,
    DiceLoss,
    FocalLoss,
    ObjectWeightedFocalLoss,
    OHEMLoss,
    SemanticEncodingLoss,
    build_criterion,
    enet_class_weights,
    object_order_of_magnitude,
)

IGNORE = 255
C = 5
FREQS = np.array([0.52, 0.3, 0.12, 0.05, 0.01])
# Cityscapes train-id pixel frequencies as published with the reference code of Lourenço et al.
# (bernardomig/torch_semantic_segmentation, data/cityscapes.py).
CITYSCAPES_FREQS = [0.3687, 0.0608, 0.2282, 0.0066, 0.0088, 0.0123, 0.0021, 0.0055, 0.1593, 0.0116,
                    0.0402, 0.0122, 0.0014, 0.0699, 0.0027, 0.0024, 0.0023, 0.0010, 0.0041]


# ---------------------------------------------------------------- reference formulas (numpy, loops)

def pixels(logits: torch.Tensor, target: torch.Tensor):
    """Yield (softmax probabilities (C,), target class weights (C,)) for every pixel, in float64."""
    x = logits.detach().double().numpy()
    t = target.numpy()
    n, c, h, w = x.shape
    for i in range(n):
        for r in range(h):
            for s in range(w):
                z = x[i, :, r, s]
                p = np.exp(z - z.max())
                p /= p.sum()
                if t.ndim == 4:
                    q = t[i, :, r, s].astype(np.float64)
                else:
                    q = np.zeros(c)
                    if t[i, r, s] != IGNORE:
                        q[t[i, r, s]] = 1.0
                yield p, q


def ref_ce(logits, target, weights=None):
    w = np.ones(logits.shape[1]) if weights is None else np.asarray(weights, np.float64)
    num = den = 0.0
    for p, q in pixels(logits, target):
        num += -(w * q * np.log(p)).sum()
        den += (w * q).sum()
    return num / den if den else 0.0


def ref_focal(logits, target, gamma, alpha=None):
    c = logits.shape[1]
    gamma = np.broadcast_to(np.asarray(gamma, np.float64), (c,))
    alpha = np.ones(c) if alpha is None else np.broadcast_to(np.asarray(alpha, np.float64), (c,))
    num = den = 0.0
    for p, q in pixels(logits, target):
        num += -(alpha * q * (1 - p) ** gamma * np.log(p)).sum()
        den += q.sum()
    return num / den if den else 0.0


def ref_ohem(logits, target, threshold, min_kept):
    """Eq. 6; a soft pixel's loss is CE against its normalised vector, weighted by the vector's sum."""
    losses = [(-(q * np.log(p)).sum() / q.sum(), q.sum()) for p, q in pixels(logits, target) if q.sum() > 0]
    losses = sorted(losses, reverse=True)  # l_i >= l_j for i < j
    n_p = math.ceil(Fraction(str(min_kept)) * len(losses))
    kept = [(loss, m) for i, (loss, m) in enumerate(losses) if loss > -math.log(threshold) or i < n_p]
    return sum(loss * m for loss, m in kept) / sum(m for _, m in kept) if kept else 0.0


def ref_dice(logits, target, smooth):
    c = logits.shape[1]
    inter, pred, truth = np.zeros(c), np.zeros(c), np.zeros(c)
    for p, q in pixels(logits, target):
        if q.sum() == 0:
            continue
        inter += p * q
        pred += p * q.sum()
        truth += q
    return 1 - np.mean((2 * inter + smooth) / (pred + truth + smooth))


def ref_sel(presence_logits, target, num_classes):
    total, count = 0.0, 0
    for i in range(target.shape[0]):
        if target.dim() == 4:
            present = (target[i] > 0).flatten(1).any(1).numpy()
            labelled = target[i].sum(0).gt(0).any().item()
        else:
            labels = target[i][target[i] != IGNORE].numpy()
            present = np.bincount(labels, minlength=num_classes) > 0
            labelled = labels.size > 0
        if not labelled:
            continue
        for c in range(num_classes):
            s = float(presence_logits[i, c])
            sig = 1 / (1 + math.exp(-s))
            total += -(present[c] * math.log(sig) + (1 - present[c]) * math.log(1 - sig))
            count += 1
    return total / count if count else 0.0


# ---------------------------------------------------------------- helpers

def batch(seed=0, n=2, h=5, w=7, ignore_fraction=0.25, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    logits = (scale * torch.randn(n, C, h, w, generator=g)).requires_grad_()
    target = torch.randint(0, C, (n, h, w), generator=g)
    target[torch.rand(n, h, w, generator=g) < ignore_fraction] = IGNORE
    return logits, target


def one_hot(target: torch.Tensor) -> torch.Tensor:
    valid = target != IGNORE
    return F.one_hot(torch.where(valid, target, 0), C).permute(0, 3, 1, 2).float() * valid.unsqueeze(1)


def soft_target(seed=1, n=2, h=5, w=7):
    """Mixup-like soft labels: blends of two one-hots, some pixels half-ignored, some fully ignored."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randint(0, C, (n, h, w), generator=g)
    b = torch.randint(0, C, (n, h, w), generator=g)
    b[torch.rand(n, h, w, generator=g) < 0.2] = IGNORE
    lam = 0.7
    soft = lam * one_hot(a) + (1 - lam) * one_hot(b)
    soft[:, :, 0, :2] = 0.0
    return soft


LOSSES = {
    'ce': (lambda: CrossEntropyLoss(), lambda x, t: ref_ce(x, t)),
    'balanced_ce': (lambda: BalancedCrossEntropyLoss(class_frequencies=FREQS, c=1.10),
                    lambda x, t: ref_ce(x, t, 1 / np.log(1.10 + FREQS))),
    'focal': (lambda: FocalLoss(gamma=2.0), lambda x, t: ref_focal(x, t, 2.0)),
    'focal_alpha': (lambda: FocalLoss(gamma=0.5, alpha=[0.1, 0.2, 0.3, 0.4, 1.0]),
                    lambda x, t: ref_focal(x, t, 0.5, [0.1, 0.2, 0.3, 0.4, 1.0])),
    'ohem': (lambda: OHEMLoss(threshold=0.7, min_kept=0.3), lambda x, t: ref_ohem(x, t, 0.7, 0.3)),
    'ohem_threshold_only': (lambda: OHEMLoss(threshold=0.2, min_kept=0.0),
                            lambda x, t: ref_ohem(x, t, 0.2, 0.0)),
    'ohem_min_kept_only': (lambda: OHEMLoss(threshold=1e-30, min_kept=0.3),
                           lambda x, t: ref_ohem(x, t, 1e-30, 0.3)),
    'dice': (lambda: DiceLoss(), lambda x, t: ref_dice(x, t, 1.0)),
    'dice_unsmoothed': (lambda: DiceLoss(smooth=0.0), lambda x, t: ref_dice(x, t, 0.0)),
    'owfl': (lambda: ObjectWeightedFocalLoss(class_frequencies=FREQS), None),
}


# ---------------------------------------------------------------- every loss

@pytest.mark.parametrize('name', [k for k, (_, ref) in LOSSES.items() if ref is not None])
def test_matches_formula_hard_and_soft(name):
    make, ref = LOSSES[name]
    loss = make()
    logits, target = batch()
    assert loss(logits, target).item() == pytest.approx(ref(logits, target), rel=1e-5)
    soft = soft_target()
    assert loss(logits, soft).item() == pytest.approx(ref(logits, soft), rel=1e-5)


@pytest.mark.parametrize('name', list(LOSSES))
def test_ignored_pixels_change_nothing(name):
    loss = LOSSES[name][0]()
    logits, target = batch(seed=3)
    value = loss(logits, target)
    (grad,) = torch.autograd.grad(value, logits)
    ignored = (target == IGNORE).unsqueeze(1).expand_as(logits)
    changed = torch.where(ignored, 100 * torch.randn_like(logits), logits.detach()).requires_grad_()
    value2 = loss(changed, target)
    (grad2,) = torch.autograd.grad(value2, changed)
    assert value2.item() == pytest.approx(value.item(), rel=1e-6)
    assert torch.allclose(grad, grad2, atol=1e-7)
    assert torch.count_nonzero(grad2[ignored]) == 0


@pytest.mark.parametrize('name', list(LOSSES))
def test_one_hot_soft_target_equals_hard(name):
    loss = LOSSES[name][0]()
    logits, target = batch(seed=4)
    hard = loss(logits, target)
    (grad_hard,) = torch.autograd.grad(hard, logits)
    soft = loss(logits, one_hot(target))
    (grad_soft,) = torch.autograd.grad(soft, logits)
    assert soft.item() == pytest.approx(hard.item(), rel=1e-6)
    assert torch.allclose(grad_soft, grad_hard, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize('name', list(LOSSES))
def test_gradients_finite_even_for_saturated_logits(name):
    loss = LOSSES[name][0]()
    logits, target = batch(seed=5, scale=200.0)  # softmax saturates: p == 1.0 exactly in float32
    for t in (target, soft_target()):
        value = loss(logits, t)
        (grad,) = torch.autograd.grad(value, logits)
        assert torch.isfinite(value) and torch.isfinite(grad).all()
        assert grad.abs().sum() > 0


@pytest.mark.parametrize('name', list(LOSSES))
def test_nothing_labelled_gives_zero(name):
    loss = LOSSES[name][0]()
    logits, _ = batch(seed=6)
    for target in (torch.full((2, 5, 7), IGNORE), torch.zeros(2, C, 5, 7)):
        value = loss(logits, target)
        (grad,) = torch.autograd.grad(value, logits)
        assert value.item() == 0.0
        assert torch.isfinite(grad).all() and torch.count_nonzero(grad) == 0


@pytest.mark.parametrize('name', list(LOSSES))
def test_half_precision_logits_give_float32_loss(name):
    loss = LOSSES[name][0]()
    logits, target = batch(seed=7)
    value = loss(logits.detach().bfloat16(), target)
    assert value.dtype == torch.float32
    assert value.item() == pytest.approx(loss(logits.detach().bfloat16().float(), target).item(), rel=1e-6)


def test_bad_targets_are_rejected_with_reasons():
    loss = CrossEntropyLoss()
    logits, target = batch()
    target[0, 0, 0] = C  # neither a class nor ignore
    with pytest.raises(ValueError, match=r'labels \[5\]'):
        loss(logits, target)
    with pytest.raises(ValueError, match='nearest-neighbour'):
        loss(logits, torch.zeros(2, 10, 14, dtype=torch.long))
    with pytest.raises(ValueError, match='soft target shape'):
        loss(logits, torch.zeros(2, C + 1, 5, 7))
    with pytest.raises(TypeError, match='integer labels'):
        loss(logits, torch.zeros(2, 5, 7, dtype=torch.bool))
    with pytest.raises(ValueError, match='alpha has 3 entries'):
        FocalLoss(alpha=[1.0, 2.0, 3.0])(logits, torch.zeros(2, 5, 7, dtype=torch.long))
    with pytest.raises(ValueError, match='non-negative'):
        FocalLoss(gamma=-1.0)


# ---------------------------------------------------------------- loss-specific behaviour

def test_enet_weights_follow_the_formula():
    weights = enet_class_weights(FREQS, c=1.02)
    assert torch.allclose(weights.double(), torch.tensor(1 / np.log(1.02 + FREQS)), rtol=1e-6)
    # Counts work as well as frequencies; a class that never occurs gets the largest weight, 1/ln(c).
    counts = enet_class_weights([520, 300, 180, 0], c=1.10)
    assert counts[3].item() == pytest.approx(1 / math.log(1.10), rel=1e-6)
    assert counts[0].item() == pytest.approx(1 / math.log(1.10 + 0.52), rel=1e-6)
    for bad in ([], [0, 0], [0.5, -0.1], [[0.5, 0.5]], [0.5, float('nan')]):
        with pytest.raises(ValueError, match='class frequencies'):
            enet_class_weights(bad)
    with pytest.raises(ValueError, match='c > 1'):
        enet_class_weights(FREQS, c=1.0)


def test_owfl_gamma_groups_cityscapes_classes_as_the_paper():
    gamma = object_order_of_magnitude(CITYSCAPES_FREQS).tolist()
    names = ['road', 'sidewalk', 'building', 'wall', 'fence', 'pole', 'traffic light', 'traffic sign',
             'vegetation', 'terrain', 'sky', 'person', 'rider', 'car', 'truck', 'bus', 'train',
             'motorcycle', 'bicycle']
    groups = {g: {n for n, v in zip(names, gamma, strict=True) if v == g} for g in (0, 1, 2)}
    # DSNet Table 4: the three gamma groups.
    assert groups[0] == {'wall', 'fence', 'traffic light', 'traffic sign', 'rider', 'truck', 'bus', 'train',
                         'motorcycle', 'bicycle'}
    assert groups[1] == {'sidewalk', 'pole', 'terrain', 'sky', 'person', 'car'}
    assert groups[2] == {'road', 'building', 'vegetation'}
    # Exact powers of ten are their own order of magnitude; an absent class gets 0.
    assert object_order_of_magnitude([100.0, 10.0, 1.0, 0.0]).tolist() == [2.0, 1.0, 0.0, 0.0]


def test_owfl_is_focal_loss_with_normalised_enet_alpha_and_magnitude_gamma():
    logits, target = batch(seed=8)
    w = 1 / np.log(FREQS + 1.02)
    gamma = [math.floor(math.log10(f / FREQS.min())) for f in FREQS]
    expected = ref_focal(logits, target, gamma, w / w.max())
    assert gamma == [1, 1, 1, 0, 0]
    owfl = ObjectWeightedFocalLoss(class_frequencies=FREQS)
    assert owfl(logits, target).item() == pytest.approx(expected, rel=1e-5)


def test_owfl_on_a_hand_computed_case():
    # Two classes with 950 and 50 pixels: f = (0.95, 0.05).
    # Eq. 2: w = 1 / ln(f + 1.02) = (1 / ln 1.97, 1 / ln 1.07); alpha = w / max w = (ln 1.07 / ln 1.97, 1).
    # Eq. 3: gamma = OM(f / min f) = (OM(19), OM(1)) = (1, 0).
    # Pixel 1, class 0, logits (ln 3, 0): p = 3/4, loss = alpha_0 * (1/4)^1 * ln(4/3).
    # Pixel 2, class 1, logits (0, 0):    p = 1/2, loss = 1 * (1/2)^0 * ln 2.
    # Pixel 3 is ignored; eq. 4 is averaged over the two labelled pixels.
    owfl = ObjectWeightedFocalLoss(class_frequencies=[950, 50])
    assert owfl.gamma.flatten().tolist() == [1.0, 0.0]
    alpha_0 = math.log(1.07) / math.log(1.97)
    assert owfl.alpha.flatten().tolist() == pytest.approx([alpha_0, 1.0], rel=1e-6)
    logits = torch.tensor([[math.log(3), 0.0], [0.0, 0.0], [5.0, -5.0]]).T.reshape(1, 2, 1, 3)
    target = torch.tensor([[[0, 1, IGNORE]]])
    expected = (alpha_0 * 0.25 * math.log(4 / 3) + math.log(2)) / 2
    assert owfl(logits, target).item() == pytest.approx(expected, rel=1e-6)
    # Eq. 5, the derivative in p of one pixel's term, at pixel 1 (gamma 1): alpha (ln p - (1 - p) / p).
    p = torch.tensor(0.75, dtype=torch.float64, requires_grad=True)
    (-alpha_0 * (1 - p) * torch.log(p)).backward()
    assert p.grad.item() == pytest.approx(alpha_0 * (math.log(0.75) - 0.25 / 0.75), rel=1e-9)


def test_sel_on_a_hand_computed_case():
    # One image holding classes 0 and 2 of three: t = (1, 0, 1); presence logits s = (0, ln 3, -ln 3).
    # Sigmoid cross entropy per class (002: "calculated by sigmoid cross entropy"; eq. 7 prints only
    # its -t log sigmoid(s) half): -ln sigmoid(0) = ln 2; -ln(1 - sigmoid(ln 3)) = ln 4;
    # -ln sigmoid(-ln 3) = ln 4. Mean over the classes: 5 ln 2 / 3.
    target = torch.tensor([[[0, 0, 2], [2, IGNORE, 0]]])
    presence_logits = torch.tensor([[0.0, math.log(3), -math.log(3)]])
    assert SemanticEncodingLoss()(presence_logits, target).item() == pytest.approx(5 * math.log(2) / 3, rel=1e-6)


def test_focal_with_gamma_zero_is_cross_entropy():
    logits, target = batch(seed=9)
    expected = CrossEntropyLoss()(logits, target).item()
    assert FocalLoss(gamma=0.0)(logits, target).item() == pytest.approx(expected, rel=1e-6)


def test_ohem_keeps_at_least_min_kept_and_all_hard_pixels():
    logits, target = batch(seed=10, h=8, w=8)
    ce = F.cross_entropy(logits, target, ignore_index=IGNORE, reduction='none')[target != IGNORE]
    # Everything kept -> plain CE; only the hardest pixel kept -> its loss.
    everything = OHEMLoss(threshold=1.0, min_kept=0.0)(logits, target)
    assert everything.item() == pytest.approx(ce.mean().item(), rel=1e-6)
    assert OHEMLoss(threshold=1e-30, min_kept=1 / ce.numel())(logits, target).item() == pytest.approx(
        ce.max().item(), rel=1e-6)
    # The threshold set is a superset of min_kept when more pixels are hard than min_kept asks for.
    hard = ce[ce > -math.log(0.7)]
    assert hard.numel() > 0.05 * ce.numel()
    assert OHEMLoss(threshold=0.7, min_kept=0.05)(logits, target).item() == pytest.approx(hard.mean().item(),
                                                                                         rel=1e-6)
    # 0.1 * 30 is 3.0000000000000004 in floats: still exactly 3 pixels kept.
    logits, target = batch(seed=16, n=1, h=5, w=6, ignore_fraction=0.0)
    ce = F.cross_entropy(logits, target, reduction='none').flatten()
    top3 = OHEMLoss(threshold=1e-30, min_kept=0.1)(logits, target)
    assert top3.item() == pytest.approx(ce.topk(3).values.mean().item(), rel=1e-6)
    for bad in ({'threshold': 0.0}, {'threshold': 1.5}, {'min_kept': -0.1}, {'min_kept': 2}):
        with pytest.raises(ValueError, match='OHEM'):
            OHEMLoss(**bad)


def test_dice_is_zero_for_a_perfect_prediction():
    _, target = batch(seed=11)
    perfect = torch.where(one_hot(target) > 0, 50.0, -50.0)
    loss = DiceLoss(smooth=0.0)(perfect, target).item()
    assert loss == pytest.approx(0.0, abs=1e-6)


def test_semantic_encoding_loss_matches_presence_bce():
    g = torch.Generator().manual_seed(12)
    presence_logits = torch.randn(3, C, generator=g, requires_grad=True)
    target = torch.randint(0, 3, (3, 6, 6), generator=g)  # classes 3 and 4 never present
    target[1, :, :3] = 4
    target[2] = IGNORE  # no labelled pixel: left out
    sel = SemanticEncodingLoss()
    value = sel(presence_logits, target)
    assert value.item() == pytest.approx(ref_sel(presence_logits.detach(), target, C), rel=1e-5)
    (grad,) = torch.autograd.grad(value, presence_logits)
    assert torch.count_nonzero(grad[2]) == 0 and torch.isfinite(grad).all()
    presence, labelled = sel.presence(target, C)
    assert presence[1].tolist() == [1.0, 1.0, 1.0, 0.0, 1.0] and labelled.tolist() == [True, True, False]
    # Soft targets: one-hot gives the same value; a class with any probability > 0 is present.
    assert sel(presence_logits, one_hot(target)).item() == pytest.approx(value.item(), rel=1e-6)
    soft = soft_target(n=3, h=6, w=6)
    expected = ref_sel(presence_logits.detach(), soft, C)
    assert sel(presence_logits, soft).item() == pytest.approx(expected, rel=1e-5)
    assert sel(presence_logits, torch.full((3, 6, 6), IGNORE)).item() == 0.0
    with pytest.raises(ValueError, match='presence logits must be'):
        sel(torch.zeros(3, C, 1, 1), target)


# ---------------------------------------------------------------- criterion

def test_criterion_is_the_weighted_sum_of_its_terms():
    logits, target = batch(seed=13)
    presence = torch.randn(2, C, requires_grad=True)
    criterion = build_criterion([{'name': 'owfl', 'weight': 1.0}, {'name': 'sel', 'weight': 0.2},
                                 {'name': 'dice', 'weight': 0.5, 'smooth': 0.0}],
                                num_classes=C, class_frequencies=FREQS)
    assert criterion.needs_context
    expected = (ObjectWeightedFocalLoss(class_frequencies=FREQS)(logits, target)
                + 0.2 * SemanticEncodingLoss()(presence, target) + 0.5 * DiceLoss(smooth=0.0)(logits, target))
    assert criterion(logits, target, presence).item() == pytest.approx(expected.item(), rel=1e-6)
    with pytest.raises(ValueError, match='pass presence_logits'):
        criterion(logits, target)
    plain = build_criterion({'name': 'balanced_ce', 'c': 1.10}, num_classes=C, class_frequencies=FREQS)
    assert not plain.needs_context and plain.state_dict() == {}  # weights come from the frequencies
    assert plain(logits, target).item() == pytest.approx(ref_ce(logits, target, 1 / np.log(1.10 + FREQS)),
                                                         rel=1e-5)
    with pytest.raises(ValueError, match='no semantic encoding loss term'):
        plain(logits, target, presence)
    with pytest.raises(ValueError, match=rf'logits must be \(N, {C + 1}, H, W\)'):
        build_criterion({'name': 'ce'}, num_classes=C + 1)(logits, target)


def test_criterion_ignore_index_reaches_every_term():
    logits, target = batch(seed=14)
    target[target == IGNORE] = 254
    criterion = build_criterion([{'name': 'ce'}, {'name': 'dice'}], num_classes=C, ignore_index=254)
    expected = CrossEntropyLoss(ignore_index=254)(logits, target) + DiceLoss(ignore_index=254)(logits, target)
    assert criterion(logits, target).item() == pytest.approx(expected.item(), rel=1e-6)


@pytest.mark.parametrize('spec, message', [
    ({'name': 'nope'}, "unknown loss 'nope'; available: balanced_ce, ce, dice, focal, ohem, owfl, sel"),
    ({'name': 'balanced_ce'}, "loss 'balanced_ce' needs class_frequencies"),
    ({'name': 'owfl'}, "loss 'owfl' needs class_frequencies"),
    ({'name': 'focal', 'gama': 2}, "loss 'focal' does not take gama; it takes: alpha, gamma"),
    ({'name': 'ce', 'ignore_index': 0}, "loss 'ce' does not take ignore_index"),
    ({'name': 'ce', 'weight': 'heavy'}, "loss 'ce': weight must be a finite number"),
    ({'weight': 1.0}, 'loss spec must be a mapping with a "name" key'),
    (['ce'], 'loss spec must be a mapping like'),
    ([], 'at least one loss term'),
])
def test_build_criterion_rejects_bad_specs(spec, message):
    with pytest.raises(ValueError) as error:
        build_criterion(spec, num_classes=C)
    assert message in str(error.value)


def test_build_criterion_checks_the_frequency_vector_length():
    with pytest.raises(ValueError, match='class_frequencies has 5 entries for 4 classes'):
        build_criterion({'name': 'balanced_ce'}, num_classes=4, class_frequencies=FREQS)
