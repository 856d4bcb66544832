"""Recycler: an array is handed out again only once nothing else holds it."""

from __future__ import annotations

import numpy as np

from fl_kubeflow import wire
from fl_kubeflow.recycling import Recycler


def _address(array: np.ndarray) -> int:
    return array.__array_interface__["data"][0]


def test_a_dropped_array_is_handed_out_again():
    arrays = Recycler()
    first = arrays.empty((1000,), np.float32)
    address = _address(first)
    del first
    again = arrays.empty((1000,), np.float32)
    assert _address(again) == address
    assert arrays.reused == 1


def test_an_array_still_held_in_any_form_is_not_reused():
    arrays = Recycler(per_kind=5)
    held = arrays.empty((1000,), np.uint8)
    view = arrays.empty((1000,), np.uint8)[10:20]  # only a view survives
    buffer = memoryview(arrays.empty((1000,), np.uint8))  # only a memoryview survives
    typed = arrays.empty((1000,), np.uint8)[8:].view(np.float32).reshape(8, 31)  # a cast view
    made = arrays.empty((1000,), np.uint8)
    assert arrays.reused == 0
    addresses = {_address(a) for a in (held, view.base, buffer.obj, made)}
    assert len(addresses) == 4 and _address(typed) - 8 not in addresses


def test_kinds_do_not_mix_and_each_kind_keeps_at_most_per_kind():
    arrays = Recycler(per_kind=2)
    a, b, c = (arrays.empty((10,), np.float64) for _ in range(3))  # c is not kept
    assert len(arrays._kept) == 2
    del a, b, c
    assert arrays.empty((10,), np.float32).dtype == np.float32  # another kind: new
    assert arrays.empty((5,), np.float64).shape == (5,)
    assert arrays.reused == 0
    assert arrays.empty((10,), np.float64).shape == (10,)
    assert arrays.reused == 1


def test_a_sealed_message_comes_back_writable_once_dropped():
    arrays = Recycler()
    weights = {"w": np.arange(6, dtype=np.float32)}
    frame = wire.Frame(weights, allocate=arrays.empty)
    np.copyto(frame.tensors["w"], weights["w"])
    message, model = frame.seal(), frame.tensors
    assert message.readonly and not model["w"].flags.writeable
    del frame, message
    assert wire.Frame(weights, allocate=arrays.empty).buffer is not None
    assert arrays.reused == 0  # the model (views of the message) still holds it
    del model
    again = wire.Frame(weights, allocate=arrays.empty)
    assert arrays.reused == 1 and again.buffer.flags.writeable
