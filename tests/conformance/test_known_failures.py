"""known_failures.toml stays honest: well-formed, every entry still matches a test of the suite,
and the bar each backend must reach is met by what is not marked as failing."""

from __future__ import annotations

import importlib.util
import re

import pytest

from . import onnx_suite
from .onnx_suite import (
    BARS,
    LABELS,
    OUTCOMES,
    RANDOM_TESTS,
    cpu_test_names,
    expected_passes,
    known_failures,
)


@pytest.fixture(scope="module")
def names() -> list[str]:
    return cpu_test_names()


def test_the_suite_is_the_pinned_one(names):
    # onnx 1.23.2 defines 2,033 tests per device; another count means another suite.
    assert len(names) == 2033


def test_every_failure_entry_matches_a_collected_test(names):
    stale = [
        f.pattern.pattern
        for f in known_failures().failures
        if not any(f.pattern.search(n) for n in names)
    ]
    assert not stale, f"known_failures.toml entries that match no test any more: {stale}"


def test_every_tolerance_entry_matches_a_collected_test(names):
    stale = [
        t.pattern.pattern
        for t in known_failures().tolerances
        if not any(t.pattern.search(n) for n in names)
    ]
    assert not stale, f"tolerance entries that match no test any more: {stale}"


def test_failure_entries_do_not_overlap_per_backend(names):
    # Two entries claiming one test on one backend means one of them has the wrong reason.
    for label in LABELS:
        for n in names:
            hits = [
                f.pattern.pattern
                for f in known_failures().failures
                if label in f.backends and f.pattern.search(n)
            ]
            assert len(hits) <= 1, f"{n} on {label} is claimed by {hits}"


def test_no_test_is_both_a_failure_and_a_tolerance(names):
    known = known_failures()
    for label in LABELS:
        for n in names:
            assert not (known.xfails(label, n) and known.tolerance(label, n)), (label, n)


def _present(label: str) -> bool:
    return label != "openvino" or importlib.util.find_spec("infer.backends.openvino") is not None


@pytest.mark.parametrize("label", LABELS)
def test_the_bar_is_met(label):
    if not _present(label):
        pytest.skip(f"infer.backends.{label} is not in this tree yet")
    assert expected_passes(label) >= BARS[label], (
        f"{label}: {expected_passes(label)} CPU tests expected to pass, the bar is {BARS[label]}"
    )


def test_auto_passes_more_than_the_backends_it_prefers():
    # `auto` tries ONNX Runtime, then OpenVINO, then the reference evaluator, and keeps the first
    # that compiles the model and does not name it as one it would answer wrongly: it passes
    # more than either runtime alone. Where a backend compiles a model and then fails at run
    # time, auto has that failure (not knowable when the model is loaded); known_failures.toml
    # lists each such test under "auto" with the reason.
    for label in ("onnxruntime", "openvino"):
        if _present(label):
            assert expected_passes("auto") > expected_passes(label), label


def test_auto_fails_only_where_onnxruntime_fails(names):
    # ONNX Runtime is tried first and kept whenever it compiles, so a test it passes is one auto
    # passes: an auto entry without an ONNX Runtime one would blame the wrong backend.
    known = known_failures()
    wrong = [n for n in names if known.xfails("auto", n) and not known.xfails("onnxruntime", n)]
    assert not wrong


def test_auto_fails_with_an_inferror_never_a_number(names):
    # The default returns no wrong value: every test auto fails is an InferError, a random draw
    # (only the random ops' tests), or the suite's own bad data. The suite run checks the kind
    # too: each auto xfail expects its outcome's exception (`Failure.raises`).
    known = known_failures()
    entries = [f for f in known.failures if "auto" in f.backends]
    assert entries and all(f.outcome in OUTCOMES for f in entries)
    for n in names:
        for f in known.xfails("auto", n):
            if f.outcome == "random":
                assert RANDOM_TESTS.search(n), f"{n}: only random ops' draws may differ under auto"
            elif f.outcome == "error":
                assert f.category != "numeric", n
    bad_data = [n for n in names if any(f.outcome == "test-data" for f in known.xfails("auto", n))]
    assert bad_data == ["test_loop16_seq_none_cpu"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '[[failure]]\npattern = "x"\nbackends = ["onnxruntime"]\ncategory = "nope"\nnote = "n"',
            "category",
        ),
        (
            '[[failure]]\npattern = "("\nbackends = ["onnxruntime"]\ncategory = "dtype"\nnote = "n"',
            "regex",
        ),
        (
            '[[failure]]\npattern = "x"\nbackends = ["tensorflow"]\ncategory = "dtype"\nnote = "n"',
            "backends",
        ),
        (
            '[[failure]]\npattern = "x"\nbackends = ["onnxruntime"]\ncategory = "dtype"\nnote = " "',
            "note",
        ),
        (
            '[[failure]]\npattern = "x"\nbackends = ["onnxruntime"]\ncategory = "env"\nnote = "n"',
            "require",
        ),
        (
            '[[failure]]\npattern = "x"\nbackend = "auto"\ncategory = "dtype"\nnote = "n"\nwhy = 1',
            "unknown keys",
        ),
        (
            '[[failure]]\npattern = "x"\nbackends = ["auto"]\ncategory = "dtype"\nnote = "n"\n'
            "strict = false",
            "outcome is random",
        ),
        (
            '[[failure]]\npattern = "x"\nbackends = ["auto"]\ncategory = "dtype"\nnote = "n"',
            "say how it fails",
        ),
        (
            '[[failure]]\npattern = "x"\nbackends = ["onnxruntime"]\ncategory = "dtype"\n'
            'note = "n"\noutcome = "error"',
            "say how it fails",
        ),
        (
            '[[failure]]\npattern = "x"\nbackends = ["auto"]\ncategory = "numeric"\nnote = "n"\n'
            'outcome = "error"',
            "only random draws",
        ),
        ('[[tolerance]]\npattern = "x"\nbackends = ["auto"]\nnote = "n"', "rtol, atol"),
        ('[[tolerance]]\npattern = "x"\nbackends = ["auto"]\natol = 2.0\nnote = "n"', "(0, 1)"),
        ('[[xfail]]\npattern = "x"', "unknown tables"),
    ],
)
def test_malformed_entries_are_refused(tmp_path, text, message):
    path = tmp_path / "known.toml"
    path.write_text(text)
    with pytest.raises(ValueError, match=re.escape(message)):
        onnx_suite.known_failures.__wrapped__(path)


def test_env_entries_apply_only_where_the_requirement_is_missing(tmp_path):
    path = tmp_path / "known.toml"
    path.write_text(
        '[[failure]]\npattern = "^test_a_cpu$"\nbackends = ["onnxruntime"]\ncategory = "env"\n'
        'requires = "locale:C"\nnote = "n"\n'
        '[[failure]]\npattern = "^test_b_cpu$"\nbackends = ["onnxruntime"]\ncategory = "env"\n'
        'requires = "locale:xx_NOWHERE.UTF-8"\nnote = "n"\n'
    )
    known = onnx_suite.known_failures.__wrapped__(path)
    assert not known.xfails("onnxruntime", "test_a_cpu")  # every machine has the C locale
    assert known.xfails("onnxruntime", "test_b_cpu")
    assert not known.xfails("auto", "test_b_cpu")
