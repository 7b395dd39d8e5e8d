"""Dataset readers (real layouts and label encodings), augmentation, mixup, validation, class frequencies."""

from __future__ import annotations

import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from seg_ros.checkpoint import IMAGENET_MEAN, IMAGENET_STD
from seg_ros.data import (
    DatasetError,
    EvalTransform,
    TrainTransform,
    build_dataset,
    class_frequencies,
    list_datasets,
    mixup_batch,
    validate_dataset,
)
from seg_ros.data.frequency import main as frequency_main
from seg_ros.labels import CAMVID11, CITYSCAPES19, IGNORE_INDEX

from .support.datasets import (
    make_bdd100k,
    make_camvid,
    make_cityscapes,
    make_folder,
    make_mapillary,
    make_synthia,
    random_rgb,
    write_gray,
    write_rgb,
)

MEAN = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
STD = torch.tensor(IMAGENET_STD).view(3, 1, 1)
FOLDER_YAML = '''\
name: toy
classes:
  - {name: road, color: [128, 64, 128]}
  - {name: car, color: [0, 0, 142]}
  - person
'''


def labels_with(values: list[int], shape: tuple[int, int] = (6, 8), seed: int = 0) -> np.ndarray:
    """A label image holding every value in ``values`` (each at least once), rest drawn from them."""
    rng = np.random.default_rng(seed)
    label = rng.choice(np.asarray(values, np.uint8), size=shape)
    label.flat[: len(values)] = values
    return label


def denormalize(image: torch.Tensor) -> torch.Tensor:
    return (image * STD + MEAN) * 255


# --------------------------------------------------------------------------------------------- readers

def test_registry_lists_every_reader():
    assert list_datasets() == ['bdd100k', 'camvid', 'cityscapes', 'folder', 'mapillary', 'synthia']
    with pytest.raises(DatasetError, match="unknown dataset 'voc'.*camvid"):
        build_dataset('voc', '.', 'train')


def test_camvid_real_splits(camvid_root):
    train = build_dataset('camvid', camvid_root, 'train')
    val = build_dataset('camvid', camvid_root, 'val')
    assert (len(train), len(val)) == (367, 101)
    assert train.label_set is CAMVID11
    assert all(image.is_file() and label.is_file() for image, label in train.files[:5])
    image, label = train[0]
    assert image.shape == (360, 480, 3) and image.dtype == np.uint8
    assert label.shape == (360, 480) and label.dtype == np.uint8
    # Void (stored 11) becomes ignore; every other stored value is kept.
    for index in range(len(train)):
        stored = cv2.imread(str(train.files[index][1]), cv2.IMREAD_UNCHANGED)
        if (stored == 11).any():
            break
    label = train[index][1]
    assert ((stored == 11) == (label == IGNORE_INDEX)).all()
    assert (label[stored != 11] == stored[stored != 11]).all()
    assert set(np.unique(label)) <= set(range(11)) | {IGNORE_INDEX}
    # The image is RGB: CamVid's sky is bright, bluish-grey, never dominated by red.
    sky = train[index][0][label == 0]
    assert sky[:, 2].mean() > sky[:, 0].mean() + 10


def test_camvid_list_files(tmp_path):
    images = make_camvid(tmp_path, 'train', [labels_with([0, 3, 11, 10])])
    image, label = build_dataset('camvid', tmp_path, 'train')[0]
    assert (image == images[0]).all()
    assert set(np.unique(label)) == {0, 3, 10, IGNORE_INDEX}
    with pytest.raises(DatasetError, match=r"split 'test'.*not found \(splits here: train\)"):
        build_dataset('camvid', tmp_path, 'test')
    (tmp_path / 'bad.txt').write_text('only_one_field.png\n')
    with pytest.raises(DatasetError, match=r'bad.txt:1: expected "image label"'):
        build_dataset('camvid', tmp_path, 'bad')
    with pytest.raises(DatasetError, match='camvid root: no folder .*nowhere'):
        build_dataset('camvid', tmp_path / 'nowhere', 'train')


def test_cityscapes_label_ids_become_train_ids(tmp_path):
    stored = {'aachen_000000_000019': labels_with([7, 26, 1, 9, 33]),
              'bremen_000001_000019': labels_with([23, 24, 0], seed=1)}
    images = make_cityscapes(tmp_path, 'train', stored)
    data = build_dataset('cityscapes', tmp_path, 'train')
    assert data.label_set is CITYSCAPES19 and len(data) == 2
    assert [image.parent.name for image, _ in data.files] == ['aachen', 'bremen']
    for (stem, label_ids), (image, label) in zip(stored.items(), data, strict=True):
        assert (image == images[stem]).all()
        expected = {7: 0, 26: 13, 1: 255, 9: 255, 33: 18, 23: 10, 24: 11, 0: 255}
        assert (label == np.vectorize(expected.get)(label_ids)).all()
    with pytest.raises(DatasetError, match="cityscapes split 'val'"):
        build_dataset('cityscapes', tmp_path, 'val')


def test_cityscapes_coarse_annotations_and_train_extra(tmp_path):
    frame = 'aachen_000000_000019'
    make_cityscapes(tmp_path, 'train', {frame: labels_with([7, 26, 24, 0])})
    make_cityscapes(tmp_path, 'train', {frame: labels_with([7, 0], seed=1)}, annotations='gtCoarse')
    extra = {'augsburg_000000_000001': labels_with([21, 23, 0], seed=2),
             'bayreuth_000000_000002': labels_with([11, 4], seed=3)}
    images = make_cityscapes(tmp_path, 'train_extra', extra, annotations='gtCoarse')
    expected = {7: 0, 26: 13, 24: 11, 0: 255, 21: 8, 23: 10, 11: 2, 4: 255}

    coarse = build_dataset('cityscapes', tmp_path, 'train_extra', annotations='coarse')
    assert coarse.label_set is CITYSCAPES19 and coarse.annotations == 'coarse'
    assert [label.relative_to(tmp_path).as_posix() for _, label in coarse.files] == [
        'gtCoarse/train_extra/augsburg/augsburg_000000_000001_gtCoarse_labelIds.png',
        'gtCoarse/train_extra/bayreuth/bayreuth_000000_000002_gtCoarse_labelIds.png']
    for (stem, label_ids), (image, label) in zip(extra.items(), coarse, strict=True):
        assert (image == images[stem]).all()
        assert (label == np.vectorize(expected.get)(label_ids)).all()
    assert validate_dataset(coarse) == []

    # The same train frame, labelled by the annotation set asked for (fine is the default).
    fine_label = build_dataset('cityscapes', tmp_path, 'train')[0][1]
    coarse_label = build_dataset('cityscapes', tmp_path, 'train', annotations='coarse')[0][1]
    assert set(np.unique(fine_label)) == {0, 13, 11, 255} and set(np.unique(coarse_label)) == {0, 255}

    with pytest.raises(DatasetError, match=r"split 'train_extra' \(fine annotations\): no folder .*gtFine"):
        build_dataset('cityscapes', tmp_path, 'train_extra')
    with pytest.raises(DatasetError, match="annotations 'polygons': expected one of fine, coarse"):
        build_dataset('cityscapes', tmp_path, 'train', annotations='polygons')
    with pytest.raises(DatasetError, match=r"'cityscapes' does not take option\(s\) annotation; it takes: "
                                           r"annotations$"):
        build_dataset('cityscapes', tmp_path, 'train', annotation='coarse')
    with pytest.raises(DatasetError, match="'camvid' does not take option.* it takes: no options"):
        build_dataset('camvid', tmp_path, 'train', annotations='coarse')


@pytest.mark.parametrize('layout', ['current', 'older'])
def test_bdd100k_layouts(tmp_path, layout):
    stored = {'7d2f7975-e0c1c5a7': labels_with([0, 13, 18, 255]), '0a0a0b1a-7c39d841': labels_with([2, 10])}
    make_bdd100k(tmp_path, 'val', stored, layout=layout)
    data = build_dataset('bdd100k', tmp_path, 'val')
    assert data.label_set is CITYSCAPES19 and len(data) == 2
    by_name = {image.stem: index for index, (image, _) in enumerate(data.files)}
    for name, train_ids in stored.items():
        image, label = data[by_name[name]]
        assert image.shape == (*train_ids.shape, 3) and (label == train_ids).all()
    with pytest.raises(DatasetError, match="bdd100k split 'train': neither"):
        build_dataset('bdd100k', tmp_path, 'train')


def test_bdd100k_unknown_values_are_refused(tmp_path):
    make_bdd100k(tmp_path, 'train', {'a': labels_with([0, 19, 40])}, layout='current')
    data = build_dataset('bdd100k', tmp_path, 'train')
    with pytest.raises(DatasetError, match='a.png: has values 19, 40 that are neither a class of cityscapes'):
        data[0]


def test_mapillary_builtin_classes_and_palette_labels(tmp_path):
    # Stored ids and colours of config_v1.2.json: 13 road, 55 car, 65 unlabeled (black).
    palette = [(0, 0, 0)] * 66
    palette[13], palette[55] = (128, 64, 128), (0, 0, 142)
    stored_ids = labels_with([13, 55, 65])
    make_mapillary(tmp_path, 'validation', {'_0aBcDeFgHiJkLmNo': stored_ids}, palette, v12_subfolder=True)
    data = build_dataset('mapillary', tmp_path, 'val')
    names = data.label_set.names
    assert data.label_set.num_classes == 65 and len(set(data.label_set.colors)) == 65
    assert (names[0], names[13], names[49], names[55], names[64]) == (
        'bird', 'road', 'traffic_sign_back', 'car', 'ego_vehicle')
    image, label = data[0]
    assert (label == np.where(stored_ids == 65, IGNORE_INDEX, stored_ids)).all() and image.shape == (6, 8, 3)
    with pytest.raises(DatasetError, match="mapillary split 'train'"):
        build_dataset('mapillary', tmp_path, 'train')


def test_mapillary_config_json_sets_the_classes(tmp_path):
    config = [
        {'name': 'construction--flat--road', 'readable': 'Road', 'color': [128, 64, 128], 'evaluate': True,
         'instances': False},
        {'name': 'void--unlabeled', 'readable': 'Unlabeled', 'color': [0, 0, 0], 'evaluate': False,
         'instances': False},
        {'name': 'object--vehicle--car', 'readable': 'Car', 'color': [0, 0, 142], 'evaluate': True,
         'instances': True},
    ]
    colors = [tuple(entry['color']) for entry in config]
    make_mapillary(tmp_path, 'training', {'k1': labels_with([0, 1, 2])}, colors, config=config)
    data = build_dataset('mapillary', tmp_path, 'train')
    assert data.label_set.names == ('road', 'car')
    _, label = data[0]
    assert (label == np.array([0, 255, 1])[labels_with([0, 1, 2])]).all()
    # A colour the config does not know is reported, not guessed.
    write_rgb(data.files[0][1], np.full((6, 8, 3), 7, np.uint8))
    with pytest.raises(DatasetError, match=r'k1.png: has colours \(7, 7, 7\) that are no class colour'):
        data[0]
    (tmp_path / 'config_v1.2.json').write_text('{"labels": [{"name": "x"}]}')
    with pytest.raises(DatasetError, match='mapillary config .*unusable'):
        build_dataset('mapillary', tmp_path, 'train')


def test_synthia_16bit_labels_map_to_cityscapes(tmp_path):
    stored = {'0000000': labels_with([3, 8, 10, 1, 16, 0, 22, 21]), '0000001': labels_with([2, 4], seed=3),
              '0000002': labels_with([19, 12, 11], seed=4)}
    make_synthia(tmp_path, stored, lists={'val': ['0000001.png', '0000002']})
    every = build_dataset('synthia', tmp_path, 'train')
    assert every.label_set is CITYSCAPES19 and len(every) == 3
    expected = {3: 0, 8: 13, 10: 11, 1: 10, 16: 255, 0: 255, 22: 255, 21: 3, 2: 2, 4: 1, 19: 15, 12: 17,
                11: 18}
    for (image_path, _), (image, label) in zip(every.files, every, strict=True):
        assert image.shape == (6, 8, 3)
        assert (label == np.vectorize(expected.get)(stored[image_path.stem])).all()
    val = build_dataset('synthia', tmp_path, 'val')
    assert [image.stem for image, _ in val.files] == ['0000001', '0000002']
    with pytest.raises(DatasetError, match="synthia split 'test': list file"):
        build_dataset('synthia', tmp_path, 'test')


def test_folder_dataset_yaml_txt_and_colour_labels(tmp_path):
    images = make_folder(tmp_path, 'train', {'a': labels_with([0, 1, 2, 255]), 'b': labels_with([1])},
                         classes_yaml=FOLDER_YAML)
    data = build_dataset('folder', tmp_path, 'train')
    assert data.label_set.name == 'toy' and data.label_set.names == ('road', 'car', 'person')
    assert data.label_set.colors[:2] == ((128, 64, 128), (0, 0, 142))
    image, label = data[0]
    assert (label == labels_with([0, 1, 2, 255])).all()
    assert (image == images['a']).all()

    txt_root = tmp_path / 'txt'
    colour_label = np.zeros((4, 5, 3), np.uint8)
    colour_label[:, :2], colour_label[:, 2:] = (128, 64, 128), (0, 0, 142)
    make_folder(txt_root, 'val', {'c': colour_label},
                classes_txt='# toy classes\nroad 128 64 128\n\ncar 0 0 142  # cars\n')
    data = build_dataset('folder', txt_root, 'val')
    assert data.label_set.name == 'txt' and data.label_set.names == ('road', 'car')
    assert (data[0][1] == np.array([0, 0, 1, 1, 1])).all()

    (txt_root / 'classes.yaml').write_text(FOLDER_YAML)
    with pytest.raises(DatasetError, match='both classes.yaml and classes.txt'):
        build_dataset('folder', txt_root, 'val')
    (txt_root / 'classes.yaml').unlink()
    (txt_root / 'classes.txt').write_text('road 128 64\n')
    with pytest.raises(DatasetError, match=r'classes.txt:1: expected "name" or "name R G B"'):
        build_dataset('folder', txt_root, 'val')
    (txt_root / 'classes.txt').unlink()
    with pytest.raises(DatasetError, match='needs classes.yaml or classes.txt'):
        build_dataset('folder', txt_root, 'val')


def test_validate_dataset_reports_each_broken_file(tmp_path):
    labels = {name: labels_with([0, 1, 2]) for name in ('good', 'no_label', 'corrupt', 'small', 'bad_value')}
    make_folder(tmp_path, 'train', labels, classes_yaml=FOLDER_YAML)
    (tmp_path / 'labels' / 'train' / 'no_label.png').unlink()
    (tmp_path / 'images' / 'train' / 'corrupt.png').write_bytes(b'\x89PNG\r\n\x1a\n not really')
    write_gray(tmp_path / 'labels' / 'train' / 'small.png', labels_with([0, 1], shape=(3, 8)))
    write_gray(tmp_path / 'labels' / 'train' / 'bad_value.png', labels_with([0, 9]))
    data = build_dataset('folder', tmp_path, 'train')
    assert len(data) == 5
    problems = validate_dataset(data)
    assert len(problems) == 4, problems
    by_file = {re.search(r'(\w+)\.png', p).group(1): p for p in problems}
    assert set(by_file) == {'no_label', 'corrupt', 'small', 'bad_value'}
    assert 'missing' in by_file['no_label'] and 'unreadable' in by_file['corrupt']
    assert 'size 8x3 differs from image' in by_file['small'] and 'has values 9 that' in by_file['bad_value']
    assert str(tmp_path / 'labels' / 'train' / 'no_label.png') in by_file['no_label']
    with pytest.raises(DatasetError, match='size 8x3 differs'):
        data[[p.stem for p, _ in data.files].index('small')]


def test_validate_real_camvid_is_clean(camvid_root):
    assert validate_dataset(build_dataset('camvid', camvid_root, 'val')) == []


# ------------------------------------------------------------------------------------------ transforms

def test_eval_transform_only_normalises():
    image, label = random_rgb(7, 9, seed=1), labels_with([0, 4, 255], shape=(7, 9))
    tensor, target = EvalTransform()(image, label)
    expected = (torch.from_numpy(image).permute(2, 0, 1).float() / 255 - MEAN) / STD
    assert tensor.shape == (3, 7, 9) and tensor.dtype == torch.float32
    assert torch.allclose(tensor, expected, atol=1e-5)
    assert target.dtype == torch.int64 and (target.numpy() == label).all()


@pytest.mark.parametrize('size', [(20, 30), (360, 480), (90, 700)])
def test_train_transform_crop_size_is_exact(size):
    torch.manual_seed(0)
    transform = TrainTransform(crop_size=(64, 96), scale_range=(0.25, 2.0))
    for _ in range(10):
        image, label = transform(random_rgb(*size, seed=0), labels_with([1, 2], shape=size))
        assert image.shape == (3, 64, 96) and image.dtype == torch.float32
        assert label.shape == (64, 96) and label.dtype == torch.int64


def test_train_transform_pads_image_with_mean_and_label_with_ignore():
    torch.manual_seed(1)
    transform = TrainTransform(crop_size=(30, 40), scale_range=(1.0, 1.0), hflip=False)
    source_image, source_label = random_rgb(10, 12, seed=2), labels_with([0, 1, 2], shape=(10, 12))
    offsets = set()
    for _ in range(20):
        image, label = transform(source_image, source_label)
        inside = label != IGNORE_INDEX
        rows, cols = torch.nonzero(inside, as_tuple=True)
        top, left = int(rows.min()), int(cols.min())
        offsets.add((top, left))
        assert inside.sum() == 10 * 12 and (label[top:top + 10, left:left + 12].numpy() == source_label).all()
        assert torch.allclose(denormalize(image[:, top:top + 10, left:left + 12]),
                              torch.from_numpy(source_image).permute(2, 0, 1).float(), atol=1e-3)
        assert (image[:, ~inside] == 0).all()  # the mean colour, after normalisation
    assert len(offsets) > 1  # placed at random inside the crop


def test_train_transform_flip_moves_image_and_label_together():
    # Column x of both the image's red channel and the label holds x, so they agree iff flipped together.
    columns = np.tile(np.arange(50, dtype=np.uint8), (20, 1))
    image = np.stack([columns, columns, columns], axis=-1)
    transform = TrainTransform(crop_size=(20, 50), scale_range=(1.0, 1.0), hflip=True)
    torch.manual_seed(3)
    flipped = []
    for _ in range(20):
        tensor, label = transform(image, columns)
        assert torch.allclose(denormalize(tensor)[0], label.float(), atol=1e-3)
        flipped.append(bool(label[0, 0] == 49))
    assert 0 < sum(flipped) < len(flipped)
    no_flip = TrainTransform(crop_size=(20, 50), scale_range=(1.0, 1.0), hflip=False)
    assert all(int(no_flip(image, columns)[1][0, 0]) == 0 for _ in range(10))


def test_train_transform_scale_range_is_honoured():
    image, label = random_rgb(40, 40, seed=4), np.ones((40, 40), np.uint8)
    transform = TrainTransform(crop_size=(100, 100), scale_range=(0.5, 2.0))
    torch.manual_seed(5)
    scales = []
    for _ in range(60):
        side = (transform(image, label)[1] == 1).sum().item() ** 0.5  # whole scaled frame, side 40 * s
        scales.append(side / 40)
    assert 0.5 - 1 / 80 <= min(scales) < 0.75 and 1.75 < max(scales) <= 2.0 + 1 / 80


def test_train_transform_is_reproducible_with_dataloader_workers(tmp_path):
    make_camvid(tmp_path, 'train', [labels_with([0, 1, 2, 3], shape=(24, 32), seed=i) for i in range(4)])
    data = build_dataset('camvid', tmp_path, 'train', TrainTransform(crop_size=(16, 16)))

    def epoch(seed: int, workers: int) -> list[torch.Tensor]:
        loader = DataLoader(data, batch_size=2, shuffle=True, num_workers=workers,
                            generator=torch.Generator().manual_seed(seed))
        return [tensor for images, labels in loader for tensor in (images, labels)]

    first = epoch(7, 2)
    assert all(torch.equal(a, b) for a, b in zip(first, epoch(7, 2), strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(first, epoch(8, 2), strict=True))


def test_transforms_refuse_bad_arguments():
    with pytest.raises(ValueError, match='crop_size'):
        TrainTransform(crop_size=(0, 10))
    with pytest.raises(ValueError, match='scale_range'):
        TrainTransform(crop_size=(8, 8), scale_range=(2.0, 1.0))
    with pytest.raises(ValueError, match='std positive'):
        EvalTransform(std=(0.2, 0.0, 0.2))
    with pytest.raises(ValueError, match='label must be HxW uint8 matching'):
        EvalTransform()(random_rgb(4, 4, seed=0), np.zeros((4, 5), np.uint8))
    with pytest.raises(ValueError, match='HxWx3 uint8'):
        EvalTransform()(np.zeros((4, 4, 3), np.float32), np.zeros((4, 4), np.uint8))


# ------------------------------------------------------------------------------------------------ mixup

def test_mixup_soft_targets_are_lambda_weighted_one_hots():
    n, num_classes, h, w = 5, 4, 6, 7
    # Sample i's image is the one-hot e_i on every pixel, so mixed[i] = l e_i + (1 - l) e_perm(i).
    images = torch.eye(n).view(n, n, 1, 1).expand(n, n, h, w).contiguous()
    labels = torch.from_numpy(np.stack([labels_with([0, 1, 2, 3, 255], (h, w), seed=i) for i in range(n)]))
    mixed, targets = mixup_batch(images, labels, num_classes=num_classes, alpha=0.4,
                                 generator=torch.Generator().manual_seed(0))
    assert targets.shape == (n, num_classes, h, w)
    partner = mixed[:, :, 0, 0].clone()
    partner[range(n), range(n)] = 0
    order = [int(p.argmax()) if p.max() > 0 else i for i, p in enumerate(partner)]
    lam = next(float(mixed[i, i, 0, 0]) for i in range(n) if order[i] != i)
    assert sorted(order) == list(range(n)) and 0 < lam < 1
    assert torch.allclose(mixed, lam * images + (1 - lam) * images[order])

    one_hot = np.eye(num_classes)
    for i, j in enumerate(order):
        for y in range(h):
            for x in range(w):
                a, b = int(labels[i, y, x]), int(labels[j, y, x])
                if a != 255 and b != 255:
                    expected = lam * one_hot[a] + (1 - lam) * one_hot[b]
                elif a != 255 or b != 255:
                    expected = one_hot[a if a != 255 else b]
                else:
                    expected = np.zeros(num_classes)
                assert np.allclose(targets[i, :, y, x].numpy(), expected, atol=1e-6), (i, y, x)
    labelled = (labels != 255) | (labels[order] != 255)
    assert torch.allclose(targets.sum(1)[labelled], torch.ones(()), atol=1e-6)
    assert (targets.sum(1)[~labelled] == 0).all()


def test_mixup_is_reproducible_and_checks_its_input():
    images, labels = torch.rand(4, 3, 5, 5), torch.randint(0, 3, (4, 5, 5))
    first = mixup_batch(images, labels, num_classes=3, alpha=1.0, generator=torch.Generator().manual_seed(1))
    again = mixup_batch(images, labels, num_classes=3, alpha=1.0, generator=torch.Generator().manual_seed(1))
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    with pytest.raises(ValueError, match='alpha must be positive'):
        mixup_batch(images, labels, num_classes=3, alpha=0)
    with pytest.raises(ValueError, match='outside 0..1'):
        mixup_batch(images, labels, num_classes=2, alpha=0.2)


# ------------------------------------------------------------------------------------- class frequencies

def readme_train_percentages(camvid_root: Path) -> np.ndarray:
    """The 'train pixels %' column of the CamVid README's class table (index 0..10)."""
    readme = (camvid_root / 'README.md').read_text()
    rows = re.findall(r'^\| (\d+) \|[^|]+\|[^|]+\| ([\d.]+) \|', readme, re.M)
    percentages = {int(index): float(train) for index, train in rows}
    return np.array([percentages[i] for i in range(11)])


def test_class_frequencies_match_camvid_readme_and_are_cached(camvid_root, tmp_path):
    train = build_dataset('camvid', camvid_root, 'train')
    cache = tmp_path / 'freq.json'
    frequencies = class_frequencies(train, cache_path=cache)
    readme = readme_train_percentages(camvid_root)
    assert frequencies.shape == (11,) and abs(frequencies.sum() - 1) < 1e-12
    assert np.abs(100 * frequencies - 100 * readme / readme.sum()).max() < 0.1
    # Reused while the key matches: an edited count shows through, proving no rescan happened.
    entry = json.loads(cache.read_text())
    assert entry['classes'] == list(CAMVID11.names) and sum(entry['pixel_counts']) > 0
    entry['pixel_counts'] = [1] * 10 + [9]
    cache.write_text(json.dumps(entry))
    assert np.allclose(class_frequencies(train, cache_path=cache), np.array([1] * 10 + [9]) / 19)
    # Another file list is another key: recomputed and the cache rewritten.
    val_frequencies = class_frequencies(build_dataset('camvid', camvid_root, 'val'), cache_path=cache)
    assert json.loads(cache.read_text())['key'] != entry['key']
    assert np.abs(100 * val_frequencies[0] - 9.18 / (100 - 1.70) * 100) < 0.1  # sky, val column


def test_frequency_command_line(tmp_path, capsys):
    make_folder(tmp_path, 'train', {'a': np.array([[0, 0, 0, 1]], np.uint8)}, classes_yaml=FOLDER_YAML)
    assert frequency_main(['--dataset', 'folder', '--root', str(tmp_path), '--split', 'train']) == 0
    out = capsys.readouterr().out
    assert re.search(r'0\s+road\s+3\s+75\.000\s+1\.751', out) and re.search(r'2\s+person\s+0\s+0\.000', out)
    assert frequency_main(['--dataset', 'folder', '--root', str(tmp_path / 'none'), '--split', 'x']) == 2
    assert f'error: folder root: no folder {tmp_path / "none"}' in capsys.readouterr().err
