"""Prompt parsing and grouping rules of predict (regions and dict_inputs)."""

from __future__ import annotations

import numpy as np
import pytest

from sam2_serve.common.errors import InvalidRequest, LimitExceeded
from sam2_serve.common.prompts import to_objects
from sam2_serve.common.schemas import DictInputs, PredictRequest, RegionPrompt

W, H = 200, 100


def regions(*items):
    return [RegionPrompt.model_validate(r) for r in items]


def test_point_is_scaled_x_by_width_y_by_height():
    [obj] = to_objects(regions({"point": [0.25, 0.5, 0]}), None, W, H)
    np.testing.assert_allclose(obj.point_coords, [[50, 50]])
    np.testing.assert_array_equal(obj.point_labels, [1])
    assert obj.box is None


@pytest.mark.parametrize("concepts,label", [
    ([], 1), ([{"name": "1"}], 1), ([{"name": "0"}], 0), ([{"name": "person", "value": 0.2}], 0),
    ([{"name": "1", "value": 0.9}], 1), ([{"name": "0", "value": 0.3}], 0), ([{"name": "x", "value": 0.5}], 1),
])
def test_labels(concepts, label):
    [obj] = to_objects(regions({"point": [0.1, 0.1], "concepts": concepts}), None, W, H)
    assert obj.point_labels.tolist() == [label]


def test_name_and_value_that_disagree():
    with pytest.raises(InvalidRequest, match="disagree"):
        to_objects(regions({"point": [0.1, 0.1], "concepts": [{"name": "1", "value": 0.0}]}), None, W, H)


def test_name_that_is_not_a_label_without_value():
    with pytest.raises(InvalidRequest, match="not a label"):
        to_objects(regions({"point": [0.1, 0.1], "concepts": [{"name": "cat"}]}), None, W, H)


def test_untracked_prompts_form_one_object():
    objs = to_objects(regions({"point": [0.1, 0.1]}, {"point": [0.2, 0.2], "concepts": [{"name": "0"}]},
                              {"box": [0.1, 0.1, 0.5, 0.5]}), None, W, H)
    assert len(objs) == 1
    np.testing.assert_allclose(objs[0].box, [20, 10, 100, 50])
    assert objs[0].point_labels.tolist() == [1, 0]


def test_several_boxes_without_points_are_one_object_each():
    objs = to_objects(regions({"box": [0, 0, 0.5, 0.5]}, {"box": [0.5, 0.5, 1, 1]}), None, W, H)
    assert len(objs) == 2 and all(o.point_coords is None for o in objs)


def test_several_boxes_and_points_need_track_ids():
    with pytest.raises(InvalidRequest, match="track_id"):
        to_objects(regions({"box": [0, 0, 0.5, 0.5]}, {"box": [0.5, 0.5, 1, 1]}, {"point": [0.1, 0.1]}), None, W, H)


def test_track_ids_group_objects_in_order_of_appearance():
    objs = to_objects(regions({"point": [0.1, 0.1], "track_id": "b"}, {"box": [0, 0, 1, 1], "track_id": "a"},
                              {"point": [0.3, 0.3], "track_id": "b"}), None, W, H)
    assert [o.track_id for o in objs] == ["b", "a"]
    assert len(objs[0].point_coords) == 2 and objs[1].box is not None


def test_one_box_per_track_id():
    with pytest.raises(InvalidRequest, match="at most one box"):
        to_objects(regions({"box": [0, 0, 1, 1], "track_id": "a"}, {"box": [0, 0, 1, 1], "track_id": "a"}),
                   None, W, H)


@pytest.mark.parametrize("region,match", [
    ({"point": [1.2, 0.5]}, "outside"), ({"point": [-0.1, 0.5]}, "outside"),
    ({"box": [0.5, 0.1, 0.2, 0.4]}, "xmax >= xmin"), ({"box": [0.1, 0.5, 0.2, 0.4]}, "ymax >= ymin"),
])
def test_coordinates_out_of_range(region, match):
    with pytest.raises(InvalidRequest, match=match):
        to_objects(regions(region), None, W, H)


def test_pixel_coordinates_when_not_normalized():
    [obj] = to_objects(regions({"point": [150, 80]}), None, W, H, normalized=False)
    np.testing.assert_allclose(obj.point_coords, [[150, 80]])
    with pytest.raises(InvalidRequest, match="pixels"):
        to_objects(regions({"point": [250, 80]}), None, W, H, normalized=False)


def test_dict_inputs():
    [obj] = to_objects(None, DictInputs(points=[[0.5, 0.5], [0.1, 0.2]], labels=[1.0, 0], box=[0, 0, 1, 1]), W, H)
    np.testing.assert_allclose(obj.point_coords, [[100, 50], [20, 20]])
    assert obj.point_labels.tolist() == [1, 0]
    np.testing.assert_allclose(obj.box, [0, 0, 200, 100])
    objs = to_objects(None, DictInputs(box=[[0, 0, 0.5, 0.5], [0.5, 0.5, 1, 1]]), W, H)
    assert len(objs) == 2


@pytest.mark.parametrize("d,match", [
    ({"points": [[0.1, 0.1]], "labels": [1, 0]}, "2 labels"),
    ({"points": [[0.1, 0.1]]}, "labels is required"),
    ({"points": [[0.1, 0.1]], "labels": [2]}, "labels are 1"),
    ({"points": [[0.1, 0.1]], "labels": [1], "box": [[0, 0, 1, 1], [0, 0, 1, 1]]}, "track_id"),
])
def test_bad_dict_inputs(d, match):
    with pytest.raises(InvalidRequest, match=match):
        to_objects(None, DictInputs.model_validate(d), W, H)


def test_no_prompts_and_both_forms():
    with pytest.raises(InvalidRequest, match="no prompts"):
        to_objects(None, None, W, H)
    with pytest.raises(InvalidRequest, match="not both"):
        to_objects(regions({"point": [0.1, 0.1]}), DictInputs(points=[[0.1, 0.1]], labels=[1]), W, H)


def test_limits():
    many = regions(*({"point": [0.1, 0.1]} for _ in range(5)))
    with pytest.raises(LimitExceeded, match="5 points"):
        to_objects(many, None, W, H, max_points=4)
    boxes = regions(*({"box": [0, 0, 1, 1]} for _ in range(3)))
    with pytest.raises(LimitExceeded, match="3 objects"):
        to_objects(boxes, None, W, H, max_objects=2)


@pytest.mark.parametrize("body", [
    {"image": {}, "regions": []},
    {"image": {"base64": "x", "image_id": "y"}},
    {"image": {"base64": "x"}, "regions": [{"point": [0.1, 0.1], "box": [0, 0, 1, 1]}]},
    {"image": {"base64": "x"}, "regions": [{"point": [0.1]}]},
    {"image": {"base64": "x"}, "regions": [{"point": [0.1, float("nan")]}]},
    {"image": {"base64": "x"}, "mask_format": "jpeg"},
    {"image": {"base64": "x"}, "unknown": 1},
    {"image": {"base64": "x"}, "regions": [{"point": [0.1, 0.1]}], "dict_inputs": {"points": [[0.1, 0.1]]}},
])
def test_schema_rejects(body):
    with pytest.raises(ValueError):
        PredictRequest.model_validate(body)
