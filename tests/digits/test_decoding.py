"""Request bodies into classification jobs, without HTTP: what `/classify-digit` hands the model side."""

from __future__ import annotations

import json

import pytest

from service.digits.decoding import job_from_form, job_from_json
from service.digits.exceptions import DigitInputError, DigitRequestInvalid
from service.digits.jobs import DigitInput


def test_json_inputs_become_named_inputs_in_order() -> None:
    job = job_from_json(json.dumps({"images": ["aaa", "bbb"], "include_prepared": True}).encode(), max_batch=4)
    assert job.batch and job.include_prepared
    assert job.inputs == [DigitInput("aaa", "images[0]"), DigitInput("bbb", "images[1]")]
    single = job_from_json(
        json.dumps({"pixels": [0.5] * 784, "value_range": "0-1", "prepare": True}).encode(), max_batch=4
    )
    assert not single.batch and single.value_range == "0-1" and single.prepare
    assert [item.param for item in single.inputs] == ["pixels"]


@pytest.mark.parametrize(
    ("body", "error_type", "loc"),
    [
        (b'{"pixels": [1, 2', "json_invalid", ("body",)),
        (b"[" * 100_000 + b"]" * 100_000, "json_invalid", ("body",)),
        (b'{"pixels": [0], "image": "x"}', "value_error", ("body",)),
        (b'{"image": 5}', "string_type", ("body", "image")),
    ],
)
def test_json_that_does_not_parse_or_fit_the_schema(body: bytes, error_type: str, loc: tuple[str, ...]) -> None:
    with pytest.raises(DigitRequestInvalid) as caught:
        job_from_json(body, max_batch=4)
    first = caught.value.errors[0]
    assert first["type"] == error_type and tuple(first["loc"]) == loc


def test_json_batches_over_the_limit_name_their_field() -> None:
    with pytest.raises(DigitInputError, match="at most 2 per request") as caught:
        job_from_json(json.dumps({"pixels_batch": [[0] * 784] * 3}).encode(), max_batch=2)
    assert caught.value.param == "pixels_batch" and not caught.value.too_large


def test_form_files_in_order_and_the_last_flag_wins() -> None:
    job = job_from_form(
        [("file", b"one"), ("include_prepared", "no"), ("file", b"two"), ("include_prepared", "Yes")], max_batch=4
    )
    assert job.batch and job.include_prepared
    assert job.inputs == [DigitInput(b"one", "file[0]"), DigitInput(b"two", "file[1]")]
    single = job_from_form([("file", b"png")], max_batch=4)
    assert not single.batch and not single.include_prepared and single.inputs == [DigitInput(b"png", "file")]


@pytest.mark.parametrize(
    ("fields", "param", "fragment"),
    [
        ([("image", b"x"), ("file", b"y")], "image", "unexpected form field"),
        ([("include_prepared", "1")], "file", "no `file` part"),
        ([("file", "text, not a file")], "file", "must be a file upload"),
        ([("file", b"a"), ("file", "b")], "file[1]", "must be a file upload"),
        ([("file", b"a")] * 3, "file", "at most 2 per request"),
    ],
)
def test_bad_forms_name_the_field(fields: list[tuple[str, bytes | str]], param: str, fragment: str) -> None:
    with pytest.raises(DigitInputError, match=fragment) as caught:
        job_from_form(fields, max_batch=2)
    assert caught.value.param == param
