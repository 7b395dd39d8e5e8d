"""Segmentation losses: CE, balanced CE, focal, OHEM, soft Dice, OWFL and the semantic encoding loss.

Every pixel loss is called as ``loss(logits, target)`` with logits (N, C, H, W) and a target that is
either hard labels, a LongTensor (N, H, W) where ``ignore_index`` marks pixels to skip, or soft
labels, a FloatTensor (N, C, H, W) of per-pixel class probabilities (mixup). A soft vector's sum
is the pixel's weight: 1 for an ordinary pixel, 0 for an ignored one, in between where mixup
blended a labelled pixel with an ignored one. Per-pixel terms are averaged with these weights, so a
one-hot soft target gives exactly the value of the hard target. A batch with no labelled pixel
gives 0 with a zero gradient. Losses are computed in float32 whatever the logits' dtype.

Formulas: Lourenço et al., "Performance Analysis on Deep Learning Semantic Segmentation with
multivariate Training Procedures", section IV (eqs. 2-7); class weights of ENet as used by ERFNet
(c = 1.10); Wang et al., "Real-Time Driving Scene Semantic Segmentation" (DSNet), eqs. 2-4 (OWFL)
and 7 (SEL, after Zhang et al., "Context Encoding for Semantic Segmentation").
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seg_ros.labels import IGNORE_INDEX
from seg_ros.training._spec import build_from_spec

__all__ = [
    'BalancedCrossEntropyLoss',
    'Criterion',
    'CrossEntropyLoss',
    'DiceLoss',
    'FocalLoss',
    'OHEMLoss',
    'ObjectWeightedFocalLoss',
    'SemanticEncodingLoss',
    'build_criterion',
    'enet_class_weights',
    'object_order_of_magnitude',
]

FloatsLike = Sequence[float] | np.ndarray | Tensor


def _frequencies(frequencies: FloatsLike) -> Tensor:
    """Validated (C,) float64 class frequencies, normalised to sum to 1 (pixel counts work too)."""
    if frequencies is None:
        raise ValueError('class frequencies are required (e.g. seg_ros.data.class_frequencies(dataset))')
    f = torch.as_tensor(np.asarray(frequencies, dtype=np.float64))
    if f.dim() != 1 or f.numel() == 0:
        raise ValueError(f'class frequencies must be a non-empty 1-D vector, got shape {tuple(f.shape)}')
    if not bool(torch.isfinite(f).all()) or bool((f < 0).any()) or float(f.sum()) <= 0:
        raise ValueError(f'class frequencies must be finite, >= 0 and not all 0, got {f.tolist()}')
    return f / f.sum()


def enet_class_weights(frequencies: FloatsLike, c: float = 1.02) -> Tensor:
    """ENet class weights ``w_c = 1 / ln(c + f_c)`` (float32, (C,)); ERFNet uses ``c = 1.10``.

    ``frequencies`` are per-class pixel frequencies (normalised here, so counts also work). With
    ``c = 1.02`` the weights lie in [1.4, 50.5]: rare classes weigh up to ~36x common ones.
    """
    if not c > 1:
        raise ValueError(f'ENet weighting needs c > 1 (so that ln(c + f) > 0), got c={c}')
    return (1.0 / torch.log(c + _frequencies(frequencies))).float()


def object_order_of_magnitude(frequencies: FloatsLike) -> Tensor:
    """DSNet's per-class focusing exponent ``gamma_c = OM(f_c / min f)`` (eq. 3), float32 (C,).

    OM is the order of magnitude, ``floor(log10(.))``: with Cityscapes frequencies this yields the
    paper's grouping (Table 4: 10 classes at 0, 6 at 1, road, building and vegetation at 2). The
    minimum is over classes that occur; a class with frequency 0 gets 0.
    """
    f = _frequencies(frequencies)
    ratio = f / f[f > 0].min()
    # The small epsilon keeps exact powers of ten (100.0 -> 2) from rounding down.
    magnitude = torch.floor(torch.log10(ratio.clamp(min=1.0)) + 1e-9)
    return magnitude.float()


def _per_class(values: float | FloatsLike | None, name: str) -> Tensor | None:
    """None, a scalar, or a (C,) vector, as a float32 tensor broadcastable to (N, C, H, W)."""
    if values is None:
        return None
    tensor = torch.as_tensor(np.asarray(values, dtype=np.float32))
    if tensor.dim() > 1 or not bool(torch.isfinite(tensor).all()) or bool((tensor < 0).any()):
        raise ValueError(f'{name} must be a non-negative number or per-class vector, got {values!r}')
    return tensor.view(1, -1, 1, 1) if tensor.dim() == 1 else tensor


def _hard_labels(target: Tensor, num_classes: int, ignore_index: int) -> tuple[Tensor, Tensor]:
    """Checked hard labels: (class index with ignored pixels set to 0, mask of labelled pixels)."""
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise TypeError(f'hard target must hold integer labels, got dtype {target.dtype}')
    target = target.long()
    valid = target != ignore_index
    bad = valid & ((target < 0) | (target >= num_classes))
    if bool(bad.any()):
        values = torch.unique(target[bad]).tolist()[:10]
        raise ValueError(f'target holds labels {values} that are neither a class (0..{num_classes - 1}) '
                         f'nor ignore_index {ignore_index}')
    return torch.where(valid, target, 0), valid


class _Target:
    """A hard or soft target seen as per-pixel class weights q[n, c, h, w] (one-hot for hard labels)."""

    def __init__(self, target: Tensor, logits: Tensor, ignore_index: int) -> None:
        n, c = logits.shape[:2]
        self.soft = target.is_floating_point()
        if self.soft:
            if target.shape != logits.shape:
                raise ValueError(f'soft target shape {tuple(target.shape)} != logits shape '
                                 f'{tuple(logits.shape)}')
            self.q = target.float()
            self.weight = self.q.sum(1)
            self.valid = self.weight > 0
            return
        if target.shape != (n, *logits.shape[2:]):
            raise ValueError(f'hard target shape {tuple(target.shape)} does not match logits '
                             f'{tuple(logits.shape)}: expected {(n, *logits.shape[2:])} (resize the labels '
                             'with nearest-neighbour interpolation to the logits size)')
        self.index, self.valid = _hard_labels(target, c, ignore_index)
        self.labels = target.long()
        self.ignore_index = ignore_index
        self.weight = self.valid.float()

    def expect(self, values: Tensor) -> Tensor:
        """Per pixel sum_c q_c * values_c, (N, H, W), exactly 0 at ignored pixels."""
        out = (self.q * values).sum(1) if self.soft else values.gather(1, self.index.unsqueeze(1)).squeeze(1)
        return torch.where(self.valid, out, 0.0)

    def cross_entropy(self, logits: Tensor, class_weights: Tensor | None = None) -> Tensor:
        """Per pixel ``-sum_c w_c q_c log p_c``, (N, H, W), 0 at ignored pixels (torch's fused kernel)."""
        target = self.q if self.soft else self.labels
        ignore_index = -100 if self.soft else self.ignore_index
        return F.cross_entropy(logits.float(), target, weight=class_weights, ignore_index=ignore_index,
                               reduction='none')

    def one_hot(self, num_classes: int) -> Tensor:
        """The full (N, C, H, W) class weights, zero at ignored pixels."""
        if self.soft:
            return self.q
        one_hot = F.one_hot(self.index, num_classes).permute(0, 3, 1, 2).float()
        return one_hot * self.valid.unsqueeze(1)


def _ratio(numerator: Tensor, denominator: Tensor) -> Tensor:
    """numerator / denominator that is 0 (finite gradient) when both are 0 (nothing labelled)."""
    return numerator / denominator.clamp(min=torch.finfo(denominator.dtype).eps)


def _for_logits(vector: Tensor | None, logits: Tensor, name: str) -> Tensor | None:
    """A per-class parameter checked against the logits' classes and put on their device."""
    if vector is None:
        return None
    if vector.numel() > 1 and vector.numel() != logits.shape[1]:
        raise ValueError(f'{name} has {vector.numel()} entries but the logits have {logits.shape[1]} classes')
    return vector.to(logits.device)


class CrossEntropyLoss(nn.Module):
    """Cross-entropy (eq. 2), optionally class-weighted (eq. 3).

    With ``class_weights`` the weighted sum is divided by the summed weights of the labelled
    pixels, as ``torch.nn.CrossEntropyLoss(weight=...)`` does and as the reference code of the
    paper trained; eq. 3 writes 1/N, which differs only by a per-batch scale.
    """

    def __init__(self, *, class_weights: FloatsLike | None = None, ignore_index: int = IGNORE_INDEX) -> None:
        super().__init__()
        self.ignore_index = ignore_index
        weights = _per_class(class_weights, 'class_weights')
        if weights is not None and weights.dim() == 0:
            raise ValueError(f'class_weights must be a per-class vector, got {class_weights!r}')
        self.register_buffer('class_weights', weights, persistent=False)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        labels = _Target(target, logits, self.ignore_index)
        class_weights = _for_logits(self.class_weights, logits, 'class_weights')
        if class_weights is None:
            return _ratio(labels.cross_entropy(logits).sum(), labels.weight.sum())
        total_weight = labels.expect(class_weights.expand_as(logits)).sum()
        return _ratio(labels.cross_entropy(logits, class_weights.flatten()).sum(), total_weight)


class BalancedCrossEntropyLoss(CrossEntropyLoss):
    """Cross-entropy weighted by ENet's ``w_c = 1 / ln(c + f_c)`` from the dataset's class frequencies."""

    def __init__(self, *, class_frequencies: FloatsLike, c: float = 1.02,
                 ignore_index: int = IGNORE_INDEX) -> None:
        super().__init__(class_weights=enet_class_weights(class_frequencies, c), ignore_index=ignore_index)


class FocalLoss(nn.Module):
    """Focal loss (eq. 5): ``-alpha_c (1 - p_c)^gamma_c log p_c`` averaged over labelled pixels.

    ``gamma`` and ``alpha`` are each a number or a per-class vector; ``alpha=None`` means 1. The
    mean is over pixels (1/N as in eq. 5), not over summed alphas, so alpha scales the loss.
    """

    def __init__(self, *, gamma: float | FloatsLike = 2.0, alpha: float | FloatsLike | None = None,
                 ignore_index: int = IGNORE_INDEX) -> None:
        super().__init__()
        self.ignore_index = ignore_index
        self.register_buffer('gamma', _per_class(gamma, 'gamma'), persistent=False)
        self.register_buffer('alpha', _per_class(alpha, 'alpha'), persistent=False)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        labels = _Target(target, logits, self.ignore_index)
        gamma = _for_logits(self.gamma, logits, 'gamma')
        alpha = _for_logits(self.alpha, logits, 'alpha')
        log_p = F.log_softmax(logits.float(), 1)
        # 1 - p from log p without cancellation; the floor keeps d/dp (1 - p)^gamma finite for gamma < 1.
        focus = (-torch.expm1(log_p)).clamp(min=1e-12).pow(gamma)
        per_class = -focus * log_p
        if alpha is not None:
            per_class = alpha * per_class
        return _ratio(labels.expect(per_class).sum(), labels.weight.sum())


class ObjectWeightedFocalLoss(FocalLoss):
    """DSNet's Object Weighted Focal Loss (eqs. 2-4): focal loss with per-class alpha and gamma.

    ``alpha_c = w_c / max(w)`` with ENet weights ``w_c = 1 / ln(f_c + c)`` (eq. 2) and
    ``gamma_c = OM(f_c / min f)`` (eq. 3, see ``object_order_of_magnitude``).
    """

    def __init__(self, *, class_frequencies: FloatsLike, c: float = 1.02,
                 ignore_index: int = IGNORE_INDEX) -> None:
        weights = enet_class_weights(class_frequencies, c)
        super().__init__(gamma=object_order_of_magnitude(class_frequencies), alpha=weights / weights.max(),
                         ignore_index=ignore_index)


class OHEMLoss(nn.Module):
    """Online hard example mining over the pixels of the batch (eq. 6).

    The mean cross-entropy of the union of the pixels whose true-class probability is below
    ``threshold`` (loss above ``-ln(threshold)``) and the ``ceil(min_kept * N)`` hardest of the N
    labelled pixels. For a soft target, the true-class probability is ``exp(-CE)`` against the
    normalised target vector and the mean is weighted by the target sums. Defaults follow the
    paper's reference code (threshold 0.7; its experiments kept at least 5%).
    """

    def __init__(self, *, threshold: float = 0.7, min_kept: float = 0.05,
                 ignore_index: int = IGNORE_INDEX) -> None:
        super().__init__()
        if not 0 < threshold <= 1:
            raise ValueError(f'OHEM threshold is a probability in (0, 1], got {threshold}')
        if not 0 <= min_kept <= 1:
            raise ValueError(f'OHEM min_kept is a fraction in [0, 1], got {min_kept}')
        self.threshold = threshold
        self.min_kept = min_kept
        self.ignore_index = ignore_index

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        labels = _Target(target, logits, self.ignore_index)
        pixel_loss = _ratio(labels.cross_entropy(logits), labels.weight).flatten()
        valid = labels.valid.flatten()
        keep = valid & (pixel_loss > -math.log(self.threshold))
        # Rounded first so that float error (0.1 * 30 = 3.0000000000000004) does not keep one extra.
        num_hardest = math.ceil(round(self.min_kept * int(valid.sum()), 6))
        if num_hardest:
            hardest = torch.where(valid, pixel_loss, -math.inf).detach().topk(num_hardest).indices
            keep[hardest] = True
        weight = torch.where(keep, labels.weight.flatten(), 0.0)
        return _ratio((weight * pixel_loss).sum(), weight.sum())


class DiceLoss(nn.Module):
    """Soft Dice loss (eq. 7) over the whole batch: ``1 - mean_c (2 I_c + s) / (P_c + T_c + s)``.

    I, P and T are the summed product, prediction and target of class c over the labelled pixels
    (each prediction weighted like its pixel: 1, or a soft target's sum).
    Eq. 7 sums the per-class terms; the mean keeps the loss in [0, 1] for any C. The smoothing
    ``s = 1`` follows the paper's reference code; a class absent from target and prediction
    (only possible with no labelled pixel) counts as a perfect match.
    """

    def __init__(self, *, smooth: float = 1.0, ignore_index: int = IGNORE_INDEX) -> None:
        super().__init__()
        if smooth < 0:
            raise ValueError(f'Dice smoothing must be >= 0, got {smooth}')
        self.smooth = smooth
        self.ignore_index = ignore_index

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        labels = _Target(target, logits, self.ignore_index)
        probs = F.softmax(logits.float(), 1)
        truth = labels.one_hot(logits.shape[1])
        dims = (0, 2, 3)
        intersection = (probs * truth).sum(dims)
        predicted = (probs * labels.weight.unsqueeze(1)).sum(dims)
        denominator = predicted + truth.sum(dims) + self.smooth
        dice = torch.where(denominator > 0, _ratio(2 * intersection + self.smooth, denominator), 1.0)
        return 1 - dice.mean()


class SemanticEncodingLoss(nn.Module):
    """DSNet / EncNet semantic encoding loss (eq. 7), called as ``sel(presence_logits, target)``.

    Binary cross-entropy between the context head's presence logits (N, C) and whether each class
    occurs in each image (the label histogram > 0; for soft targets, any pixel with probability
    > 0). Images without any labelled pixel say nothing about presence and are left out.
    """

    def __init__(self, *, ignore_index: int = IGNORE_INDEX) -> None:
        super().__init__()
        self.ignore_index = ignore_index

    def presence(self, target: Tensor, num_classes: int) -> tuple[Tensor, Tensor]:
        """(N, C) float class presence per image, and the (N,) mask of images with labelled pixels."""
        n = target.shape[0]
        if target.is_floating_point():
            present = (target > 0).flatten(2).any(2)
            return present.float(), present.any(1)
        index, valid = _hard_labels(target, num_classes, self.ignore_index)
        image = torch.arange(n, device=target.device).view(-1, *[1] * (target.dim() - 1))
        histogram = torch.bincount((image * num_classes + index)[valid], minlength=n * num_classes)
        return (histogram.view(n, num_classes) > 0).float(), valid.flatten(1).any(1)

    def forward(self, presence_logits: Tensor, target: Tensor) -> Tensor:
        if presence_logits.dim() != 2 or presence_logits.shape[0] != target.shape[0]:
            raise ValueError(f'presence logits must be (N, C) with N = {target.shape[0]} target images, '
                             f'got {tuple(presence_logits.shape)}')
        num_classes = presence_logits.shape[1]
        if target.is_floating_point() and (target.dim() != 4 or target.shape[1] != num_classes):
            raise ValueError(f'soft target must be (N, {num_classes}, H, W), got {tuple(target.shape)}')
        presence, labelled = self.presence(target, num_classes)
        bce = F.binary_cross_entropy_with_logits(presence_logits.float(), presence, reduction='none')
        weight = labelled.float().unsqueeze(1).expand_as(bce)
        return _ratio((weight * bce).sum(), weight.sum())


_LOSSES: dict[str, type[nn.Module]] = {
    'ce': CrossEntropyLoss,
    'balanced_ce': BalancedCrossEntropyLoss,
    'focal': FocalLoss,
    'ohem': OHEMLoss,
    'dice': DiceLoss,
    'owfl': ObjectWeightedFocalLoss,
    'sel': SemanticEncodingLoss,
}


class Criterion(nn.Module):
    """Weighted sum of loss terms; called as ``criterion(logits, target, presence_logits=None)``.

    ``presence_logits`` (N, C) from a context head are needed exactly when a ``SemanticEncodingLoss``
    term is present (``needs_context``).
    """

    def __init__(self, terms: Sequence[tuple[float, nn.Module]], *, num_classes: int) -> None:
        super().__init__()
        if not terms:
            raise ValueError('a criterion needs at least one loss term')
        self.num_classes = num_classes
        self.weights = [float(weight) for weight, _ in terms]
        self.losses = nn.ModuleList(loss for _, loss in terms)

    @property
    def needs_context(self) -> bool:
        return any(isinstance(loss, SemanticEncodingLoss) for loss in self.losses)

    def forward(self, logits: Tensor, target: Tensor, presence_logits: Tensor | None = None) -> Tensor:
        if logits.dim() != 4 or logits.shape[1] != self.num_classes:
            raise ValueError(f'logits must be (N, {self.num_classes}, H, W), got {tuple(logits.shape)}')
        if self.needs_context and presence_logits is None:
            raise ValueError('this criterion has a semantic encoding loss term: pass presence_logits '
                             '(build the model with context_head=True and call it with with_context=True)')
        if presence_logits is not None and not self.needs_context:
            raise ValueError('presence_logits given but no semantic encoding loss term uses them')
        total = logits.new_zeros((), dtype=torch.float32)
        for weight, loss in zip(self.weights, self.losses, strict=True):
            inputs = presence_logits if isinstance(loss, SemanticEncodingLoss) else logits
            total = total + weight * loss(inputs, target)
        return total

    def extra_repr(self) -> str:
        return f'weights={self.weights}'


def build_criterion(spec: Mapping | Sequence[Mapping], *, num_classes: int,
                    class_frequencies: FloatsLike | None = None,
                    ignore_index: int = IGNORE_INDEX) -> Criterion:
    """A ``Criterion`` from one loss spec or a list of them.

    Each spec is ``{'name': ..., 'weight': 1.0, **options}``; names: ce, balanced_ce, focal, ohem,
    dice, owfl, sel. ``class_frequencies`` (C,) is required by balanced_ce and owfl.
    """
    specs = [spec] if isinstance(spec, Mapping) else list(spec)
    if class_frequencies is not None and len(class_frequencies) != num_classes:
        raise ValueError(f'class_frequencies has {len(class_frequencies)} entries for {num_classes} classes')
    terms = []
    for term in specs:
        if not isinstance(term, Mapping):
            raise ValueError(f'loss spec must be a mapping like {{"name": "ce"}}, got {term!r}')
        options = dict(term)
        weight = options.pop('weight', 1.0)
        if not isinstance(weight, (int, float)) or isinstance(weight, bool) or not math.isfinite(weight):
            raise ValueError(f'loss {options.get("name")!r}: weight must be a finite number, got {weight!r}')
        loss = build_from_spec('loss', _LOSSES, options, class_frequencies=class_frequencies,
                               ignore_index=ignore_index)
        terms.append((weight, loss))
    return Criterion(terms, num_classes=num_classes)
