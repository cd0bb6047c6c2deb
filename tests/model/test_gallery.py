"""A package's gallery is read as plain arrays: a pickled .npy or ids that do not match its
vectors are refused at load, never run or half-read."""
import json

import numpy as np
import pytest

from model.serving.gallery import Gallery


def _artifacts(tmp_path, vectors, ids):
    np.save(tmp_path / "v.npy", vectors, allow_pickle=True)
    (tmp_path / "ids.json").write_text(json.dumps(ids))
    return {"gallery_vectors": str(tmp_path / "v.npy"), "gallery_ids": str(tmp_path / "ids.json")}


def test_a_gallery_searches_its_vectors(tmp_path):
    vectors = np.array([[1, 0], [0, 1], [3, 4]], np.float32)
    gallery = Gallery.open(_artifacts(tmp_path, vectors, ["a", "b", "c"]))
    ids, cosines = gallery.nearest(np.array([[0, 2]], np.float32), k=2)[0]
    assert ids == ["b", "c"] and cosines == pytest.approx([1.0, 0.8])
    assert Gallery.open({}) is None


@pytest.mark.parametrize("vectors, ids, error", [
    (np.array([{"x": 1}], dtype=object), ["a"], "pickle"),            # an object array
    (np.eye(3, 4, dtype=np.float32), ["a", "b"], "one id"),            # ids short
    (np.eye(2, 4, dtype=np.float32), ["a", 7], "one id"),              # an id not a string
    (np.ones(4, np.float32), ["a"], "one id"),                         # not [n, dim]
])
def test_a_bad_gallery_is_refused(tmp_path, vectors, ids, error):
    with pytest.raises(ValueError, match=error):
        Gallery.open(_artifacts(tmp_path, vectors, ids))
