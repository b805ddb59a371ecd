import warnings

import pytest
import torch
from monai.data import MetaTensor

from mskd.engines import TeacherCache, resolve_teacher_outputs, teacher_outputs_line


class FakeTeacher:
    """A teacher forward that records the batches it gets: logits 2x the input, taps ``low`` (x + 1) and ``high``
    (half the resolution), every tensor batch-first."""

    def __init__(self):
        self.calls: list[torch.Tensor] = []

    def __call__(self, inputs):
        self.calls.append(inputs.clone())
        logits = torch.cat([inputs, -inputs], 1) * 2
        return logits, {"low": inputs + 1, "high": inputs[..., ::2, ::2] * 3}


def _images(n, seed=0, size=4):
    return torch.rand(n, 1, size, size, generator=torch.Generator().manual_seed(seed))


def _sample_bytes(size=4):
    return (2 + 1) * size * size * 4 + (size // 2) ** 2 * 4  # logits (2 channels) + low + high, float32


@pytest.mark.parametrize(
    "other, same",
    [
        (lambda x: x.clone(), True),
        (lambda x: x.contiguous(memory_format=torch.channels_last), True),  # values decide, not the memory layout
        (lambda x: MetaTensor(x.clone()), True),
        (lambda x: x.index_put((torch.tensor([0]),) * 4, torch.tensor(0.123)), False),  # one pixel changed
        (lambda x: x.reshape(x.shape[0], 1, 2, 8), False),  # same bytes, another shape
        (lambda x: x.view(torch.int32), False),  # same bytes, another dtype
    ],
)
def test_key_is_the_content_shape_and_dtype_of_each_sample(other, same):
    images = _images(2)
    keys, other_keys = TeacherCache.keys(images), TeacherCache.keys(other(images))
    assert len(keys) == 2 and keys[0] != keys[1]
    assert (keys[0] == other_keys[0]) == same
    assert keys[1] == TeacherCache.keys(images[1:])[0]  # a sample's key does not depend on its batch


def test_hits_return_exactly_the_stored_tensors_without_running_the_teacher():
    cache, teacher, images = TeacherCache(), FakeTeacher(), _images(3)
    first_logits, first_features = cache.outputs(images, images, teacher)
    logits, features = cache.outputs(images, images, teacher)

    assert len(teacher.calls) == 1 and (cache.hits, cache.misses, len(cache)) == (3, 3, 3)
    assert cache.hit_rate == 0.5
    stored = [cache.get(key) for key in TeacherCache.keys(images)]
    assert torch.equal(logits, torch.cat([s[0] for s in stored]))
    for name in ("low", "high"):
        assert torch.equal(features[name], torch.cat([s[1][name] for s in stored]))
        assert torch.equal(features[name], first_features[name])
    assert torch.equal(logits, first_logits)
    first_logits.add_(1)  # the batch handed out is not the stored memory
    assert torch.equal(cache.get(TeacherCache.keys(images)[0])[0], logits[:1])


def test_teacher_runs_only_on_the_new_samples_and_the_batch_keeps_its_order():
    cache, teacher = TeacherCache(), FakeTeacher()
    seen, new = _images(2, seed=0), _images(2, seed=1)
    cache.outputs(seen, seen, teacher)
    mixed = torch.stack([new[0], seen[1], new[1], seen[0]])
    logits, features = cache.outputs(mixed, mixed, teacher)

    assert torch.equal(teacher.calls[-1], new)  # only the new ones, in batch order
    expected_logits, expected_features = FakeTeacher()(mixed)
    torch.testing.assert_close(logits, expected_logits, rtol=0, atol=0)
    for name, value in expected_features.items():
        torch.testing.assert_close(features[name], value, rtol=0, atol=0)
    assert (cache.hits, cache.misses, len(cache)) == (2, 4, 4)


def test_a_new_sample_repeated_in_a_batch_runs_once():
    cache, teacher, images = TeacherCache(), FakeTeacher(), _images(2)
    batch = torch.stack([images[0], images[1], images[0]])
    logits, _ = cache.outputs(batch, batch, teacher)
    assert teacher.calls[0].shape[0] == 2 and (cache.hits, cache.misses) == (1, 2)
    assert torch.equal(logits[0], logits[2])


def test_a_changed_pixel_is_a_miss():
    cache, teacher, images = TeacherCache(), FakeTeacher(), _images(1)
    cache.outputs(images, images, teacher)
    changed = images.clone()
    changed[0, 0, 3, 3] = torch.nextafter(changed[0, 0, 3, 3], torch.tensor(2.0))  # the smallest change there is
    logits, _ = cache.outputs(changed, changed, teacher)
    assert len(teacher.calls) == 2 and (cache.hits, cache.misses) == (0, 2)
    assert torch.equal(logits, FakeTeacher()(changed)[0])


def test_the_byte_budget_stops_storing_and_warns_once():
    cache, teacher = TeacherCache(max_bytes=3 * _sample_bytes()), FakeTeacher()
    with pytest.warns(UserWarning, match=r"teacher cache full: 3 samples .* max_bytes=624 .* teacher_cache_gib"):
        cache.outputs(_images(2, seed=0), _images(2, seed=0), teacher)
        cache.outputs(_images(2, seed=1), _images(2, seed=1), teacher)
    assert cache.full and len(cache) == 3 and cache.nbytes == 3 * _sample_bytes()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning
        images = _images(2, seed=2)
        logits, _ = cache.outputs(images, images, teacher)  # not stored: the teacher runs on them
        cache.outputs(images, images, teacher)
    assert torch.equal(logits, FakeTeacher()(images)[0])
    assert len(cache) == 3 and (cache.hits, cache.misses) == (0, 8) and len(teacher.calls) == 4
    cache.clear()
    assert (len(cache), cache.nbytes, cache.hits, cache.misses, cache.full) == (0, 0, 0, 0, False)


@pytest.mark.parametrize("storage", ["device", "cpu"])
def test_each_sample_is_stored_in_its_own_memory(storage):
    cache, images = TeacherCache(storage=storage), _images(4)
    cache.outputs(images, images, FakeTeacher())
    logits, features = cache.get(TeacherCache.keys(images)[2])
    assert logits.shape == (1, 2, 4, 4) and features["high"].shape == (1, 1, 2, 2)
    stored = logits.untyped_storage().nbytes() + sum(f.untyped_storage().nbytes() for f in features.values())
    assert stored == _sample_bytes() and cache.nbytes == 4 * _sample_bytes()  # a view would keep the whole batch


@pytest.mark.parametrize(
    "kwargs, error",
    [
        ({"max_bytes": 0}, r"max_bytes must be an integer > 0 \(bytes\), got 0"),
        ({"max_bytes": -1}, "got -1"),
        ({"max_bytes": 1.5}, "got 1.5"),
        ({"max_bytes": True}, "got True"),
        ({"max_bytes": "4GiB"}, "got '4GiB'"),
        ({"storage": "gpu"}, "gpu"),
    ],
)
def test_bad_arguments_are_refused(kwargs, error):
    with pytest.raises(ValueError, match=error):
        TeacherCache(**kwargs)


def test_a_cache_holds_one_teachers_outputs():
    cache, teacher = TeacherCache(), torch.nn.Conv2d(1, 2, 1)
    cache.bind(teacher)
    cache.bind(teacher)  # the same one again is fine
    with pytest.raises(ValueError, match="another teacher .*Conv2d.*its own cache"):
        cache.bind(torch.nn.Conv2d(1, 2, 1))


def test_teacher_outputs_must_be_batch_first_tensors():
    images = _images(2)
    with pytest.raises(ValueError, match=r"batch-first outputs: the teacher's tap 'low' has shape \(1, 2, 4, 4\)"):
        TeacherCache().outputs(images, images, lambda x: (x, {"low": x.transpose(0, 1)}))
    with pytest.raises(TypeError, match="logits is a tuple"):
        TeacherCache().outputs(images, images, lambda x: ((x, x), {}))
    with pytest.raises(ValueError, match="images hold 2 samples but inputs 1"):
        TeacherCache().outputs(images, images[:1], FakeTeacher())
    with pytest.raises(TypeError, match="got list"):
        TeacherCache.keys([images])


@pytest.mark.parametrize(
    "mode, augment, expected",
    [
        ("auto", False, "cached"),
        ("auto", "false", "cached"),  # the command line passes strings
        ("auto", True, "live"),
        ("auto", "true", "live"),
        ("cached", False, "cached"),
        ("Cached", "no", "cached"),
        ("live", False, "live"),
        ("live", True, "live"),
    ],
)
def test_teacher_outputs_in_force(mode, augment, expected):
    assert resolve_teacher_outputs(mode, augment) == expected


@pytest.mark.parametrize("augment", [True, "true", "1"])
def test_cached_teacher_outputs_with_augmentation_are_refused_in_one_line(augment):
    with pytest.raises(ValueError) as raised:
        resolve_teacher_outputs("cached", augment)
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith("teacher_outputs: 'cached' needs augment false (random augmentation makes every input")
    assert "set teacher_outputs to 'auto' or 'live', or augment to false" in message


@pytest.mark.parametrize(
    "mode, augment, error",
    [("sometimes", False, "teacher_outputs: Unsupported option 'sometimes'"), ("auto", "maybe", "augment must be")],
)
def test_bad_teacher_outputs_settings(mode, augment, error):
    with pytest.raises(ValueError, match=error):
        resolve_teacher_outputs(mode, augment)


@pytest.mark.parametrize(
    "mode, augment, line",
    [
        ("auto", False, "teacher outputs: cached (augment=false)"),
        ("auto", "true", "teacher outputs: live (augment=true)"),
        ("live", False, "teacher outputs: live (teacher_outputs=live, augment=false)"),
        ("cached", "false", "teacher outputs: cached (teacher_outputs=cached, augment=false)"),
    ],
)
def test_the_line_printed_at_the_start(mode, augment, line):
    assert teacher_outputs_line(mode, augment) == line
