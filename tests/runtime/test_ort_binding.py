"""The ONNX Runtime backend's lean call path (runtime/ort_backend.py): an array bound once is not bound again while
it is the same array, yet every call computes from the memory fed to it -- an array changed in place, a new array
of the same shape, a call with other shapes (checked again) -- equal to a fresh backend's answer."""
from __future__ import annotations

import numpy as np
import pytest

from nextstep_trt.core.errors import UserError
from nextstep_trt.export.components import backbone_feeds
from nextstep_trt.runtime.ort_backend import OrtBackend


class CountingBinding:
    """The session's IO binding, counting the bind calls per tensor."""

    def __init__(self, binding):
        self.binding, self.calls = binding, {}

    def __getattr__(self, attr):
        target = getattr(self.binding, attr)
        if not attr.startswith("bind_"):
            return target

        def counted(name, *args, **kwargs):
            self.calls[name] = self.calls.get(name, 0) + 1
            return target(name, *args, **kwargs)
        return counted


def _fresh(artifacts, feeds):
    with OrtBackend(artifacts) as be:
        return {k: v.copy() for k, v in be.run("backbone", feeds).items()}


def _close(got, want):
    for name, value in want.items():
        np.testing.assert_allclose(got[name], value, rtol=0, atol=1e-6, err_msg=name)


@pytest.fixture()
def backend(tiny_artifacts):
    with OrtBackend(tiny_artifacts[0]) as be:
        be.session("backbone")
        be._bindings["backbone"] = CountingBinding(be._bindings["backbone"])
        yield be


def test_same_arrays_are_bound_once_and_changes_in_place_are_seen(backend, tiny_artifacts, tiny_bundle):
    spec = backend.spec("backbone")
    feeds = backbone_feeds(tiny_bundle, spec, 2, 1, 5, np.random.default_rng(0))
    first = {k: v.copy() for k, v in backend.run("backbone", feeds).items()}
    _close(first, _fresh(tiny_artifacts[0], feeds))
    calls = dict(backend._bindings["backbone"].calls)
    assert calls["past_key.0"] == 1 and calls["cond"] == 1

    feeds["past_mask"][1, 2] = 0                     # the same array, changed in place (as the runtime's cache mask)
    feeds["past_key.0"] *= 2
    second = {k: v.copy() for k, v in backend.run("backbone", feeds).items()}
    assert backend._bindings["backbone"].calls["past_key.0"] == 1            # not bound again...
    assert backend._bindings["backbone"].calls["cond"] == 1
    _close(second, _fresh(tiny_artifacts[0], feeds))                         # ...yet read as it is now
    assert not np.allclose(second["cond"], first["cond"])


def test_a_new_array_of_the_same_shape_is_bound_and_read(backend, tiny_artifacts, tiny_bundle):
    spec = backend.spec("backbone")
    rng = np.random.default_rng(1)
    feeds = backbone_feeds(tiny_bundle, spec, 2, 1, 5, rng)
    backend.run("backbone", feeds)
    other = dict(feeds, **{"past_value.0": rng.standard_normal(feeds["past_value.0"].shape).astype(np.float32)})
    got = backend.run("backbone", other)
    assert backend._bindings["backbone"].calls["past_value.0"] == 2
    _close(got, _fresh(tiny_artifacts[0], other))


def test_other_shapes_are_checked_again(backend, tiny_bundle):
    spec = backend.spec("backbone")
    feeds = backbone_feeds(tiny_bundle, spec, 2, 1, 5, np.random.default_rng(2))
    backend.run("backbone", feeds)
    longer = backbone_feeds(tiny_bundle, spec, 2, 3, 5, np.random.default_rng(3))
    assert backend.run("backbone", longer)["new_key.0"].shape[2] == 3     # output buffers sized for the new call
    bad = dict(longer, input_ids=longer["input_ids"].astype(np.int32))
    with pytest.raises(UserError, match="input_ids: dtype int32"):
        backend.run("backbone", bad)
