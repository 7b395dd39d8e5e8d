"""Label sets and the mapping tables that make CamVid- and Cityscapes-trained models comparable."""

from __future__ import annotations

import numpy as np
import pytest

from seg_ros.labels import (
    CAMVID11,
    CITYSCAPES19,
    IGNORE_INDEX,
    ROAD11,
    LabelSet,
    common_label_set,
    get_label_set,
    mapping_table,
)


def test_builtin_sets():
    assert CAMVID11.num_classes == 11 and CITYSCAPES19.num_classes == 19
    assert get_label_set('camvid11') is CAMVID11
    with pytest.raises(KeyError, match="unknown label set 'voc'"):
        get_label_set('voc')
    palette = CAMVID11.palette()
    assert palette.shape == (256, 3) and tuple(palette[3]) == (128, 64, 128)  # road
    assert (palette[IGNORE_INDEX] == 0).all()


def test_invalid_sets_are_refused():
    with pytest.raises(ValueError, match='2 names but 1 colours'):
        LabelSet('x', ('a', 'b'), ((0, 0, 0),))
    with pytest.raises(ValueError, match='not an RGB triple'):
        LabelSet('x', ('a',), ((0, 0, 300),))


def test_round_trip_through_dict():
    assert LabelSet.from_dict(CITYSCAPES19.to_dict()) == CITYSCAPES19
    generic = LabelSet.generic(5)
    assert generic.num_classes == 5 and LabelSet.from_dict(generic.to_dict()) == generic


def test_cityscapes_and_camvid_meet_in_road11():
    assert common_label_set([CAMVID11, CAMVID11]) is CAMVID11
    assert common_label_set([CAMVID11, CITYSCAPES19]) is ROAD11
    city = mapping_table(CITYSCAPES19, ROAD11)
    camvid = mapping_table(CAMVID11, ROAD11)
    names = CITYSCAPES19.names
    for city_name, road_name in [('car', 'vehicle'), ('truck', 'vehicle'), ('person', 'pedestrian'),
                                 ('rider', 'cyclist'), ('wall', 'building'), ('traffic_sign', 'sign')]:
        assert ROAD11.names[city[names.index(city_name)]] == road_name
    assert city[names.index('terrain')] == IGNORE_INDEX
    assert ROAD11.names[camvid[CAMVID11.names.index('tree')]] == 'vegetation'
    # A road pixel is road in both.
    mask_city = np.array([[names.index('road'), IGNORE_INDEX]], np.uint8)
    mask_camvid = np.array([[CAMVID11.names.index('road'), 0]], np.uint8)
    assert city[mask_city][0, 0] == camvid[mask_camvid][0, 0] == ROAD11.names.index('road')
    assert city[mask_city][0, 1] == IGNORE_INDEX
    # Every class of both sets maps somewhere, except Cityscapes' terrain.
    assert (camvid[:11] != IGNORE_INDEX).all()
    assert (city[:19] != IGNORE_INDEX).sum() == 18


def test_unknown_sets_have_no_mapping():
    with pytest.raises(ValueError, match="no mapping to a common label set for generic4"):
        common_label_set([CAMVID11, LabelSet.generic(4)])
    with pytest.raises(ValueError, match="no mapping from label set 'camvid11' to 'cityscapes19'"):
        mapping_table(CAMVID11, CITYSCAPES19)
