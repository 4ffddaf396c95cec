"""The optional YOLO-pose backend's adapter, where ultralytics is installed (the GPU machine).

The default install never has ultralytics (it pulls a CUDA torchvision; PyPI has no CPU build),
so on CI this module is skipped with that reason. On a machine with the ``yolo`` extra, a model
built from its yaml (random weights: no weights are downloadable offline) runs on a real frame
and the adapter must turn its output into well-formed COCO-17 persons.
"""

from __future__ import annotations

import pytest

ultralytics = pytest.importorskip(
    "ultralytics", reason="ultralytics (the optional 'yolo' extra) is not installed here: "
                          "the YOLO-pose adapter runs only on a machine with it (GPU machine)")


def test_yolo_pose_adapter_on_a_real_frame(sample):
    from momentbus.media import FileSource
    from momentbus.extractors.pose_yolo import YoloPoseExtractor

    ex = YoloPoseExtractor(model="yolo11n-pose.yaml", min_confidence=0.0)
    src = FileSource(sample("single_face.mp4"))
    frame = next(iter(src.items()))
    src.close()
    [result] = ex.process(frame)
    assert isinstance(result.payload.persons, list)
    for person in result.payload.persons:
        assert len(person.keypoints) == 17
        assert all(0 <= k.visibility <= 1 for k in person.keypoints)
        assert person.box.x0 <= person.box.x1 and 0 <= person.score <= 1
