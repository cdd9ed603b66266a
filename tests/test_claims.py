"""Claim checks: strict in CI, a printed note on a student's machine; a student's function that raises anything."""

from __future__ import annotations

import pytest

from dpo_teach import claims


def test_a_holding_claim_is_silent(monkeypatch, capsys):
    monkeypatch.setenv(claims.STRICT_ENV, "1")
    monkeypatch.delenv(claims.MODE_ENV, raising=False)
    assert claims.check(1 < 2, "one is less than two") is None
    assert capsys.readouterr().out == ""


def test_strict_mode_raises(monkeypatch):
    monkeypatch.setenv(claims.STRICT_ENV, "1")
    monkeypatch.delenv(claims.MODE_ENV, raising=False)
    with pytest.raises(claims.ClaimFailed, match="the margin grows"):
        claims.check(False, "the margin grows")
    with pytest.raises(AssertionError):  # a ClaimFailed is an AssertionError, as the asserts it replaced
        claims.check(0)


def test_a_student_run_prints_what_differs_and_why(monkeypatch, capsys):
    monkeypatch.delenv(claims.STRICT_ENV, raising=False)
    monkeypatch.delenv(claims.MODE_ENV, raising=False)
    claims.check(False, "accuracy above 0.75")
    claims.check(False, "a package is missing", why="another environment")
    out = capsys.readouterr().out
    assert "claim not reproduced on this machine: accuracy above 0.75" in out and "seed 0" in out
    assert "why this can happen: another environment" in out and "The notebook goes on" in out


def test_forced_failure_prints_and_never_raises(monkeypatch, capsys):
    monkeypatch.setenv(claims.MODE_ENV, "fail")
    monkeypatch.setenv(claims.STRICT_ENV, "0")
    claims.check(True, "true, but forced to fail")
    assert "(forced: DPO_TEACH_CLAIMS=fail): true, but forced to fail" in capsys.readouterr().out


@pytest.mark.parametrize("error", [NotImplementedError("stub"), ValueError("shapes"), RuntimeError("boom"),
                                   IndexError("index 3"), KeyError("loss")])
def test_try_exercise_catches_whatever_a_student_function_raises(capsys, error):
    def broken():
        raise error

    ok, out = claims.try_exercise("Exercise 5.1 (completion_mask)", broken, fallback="the collator's mask")
    printed = capsys.readouterr().out
    assert (ok, out) == (False, None)
    assert "Exercise 5.1 (completion_mask)" in printed and "the collator's mask is used instead" in printed


def test_try_exercise_returns_the_result():
    assert claims.try_exercise("Exercise 3.3", lambda: 42) == (True, 42)


@pytest.mark.parametrize("value, strict", [("1", True), ("true", True), ("Yes", True), ("ON", True), (" 1 ", True),
                                           ("0", False), ("false", False), ("no", False), ("off", False), ("", False)])
def test_strict_mode_reads_the_usual_spellings(monkeypatch, capsys, value, strict):
    """`DPO_TEACH_STRICT=true` was read as not strict: a CI that set it passed with claims that failed."""
    monkeypatch.setenv(claims.STRICT_ENV, value)
    monkeypatch.delenv(claims.MODE_ENV, raising=False)
    if strict:
        with pytest.raises(claims.ClaimFailed):
            claims.check(False, "the margin grows")
    else:
        claims.check(False, "the margin grows")
        assert "claim not reproduced" in capsys.readouterr().out


@pytest.mark.parametrize("name, value", [(claims.STRICT_ENV, "2"), (claims.STRICT_ENV, "strict"),
                                         (claims.MODE_ENV, "fial"), (claims.MODE_ENV, "1")])
def test_a_claim_setting_of_no_known_value_is_named(monkeypatch, name, value):
    """Each was read as off, without a word (`DPO_TEACH_CLAIMS=FAIL` too, which now means fail)."""
    monkeypatch.delenv(claims.STRICT_ENV, raising=False)
    monkeypatch.delenv(claims.MODE_ENV, raising=False)
    monkeypatch.setenv(name, value)
    with pytest.raises(claims.ClaimSettingError, match=rf"^{name}='{value}' is none of .*; set one of them, or unset"):
        claims.check(True, "holds")


def test_forced_failure_reads_its_value_in_any_case(monkeypatch, capsys):
    monkeypatch.setenv(claims.MODE_ENV, " FAIL")
    monkeypatch.setenv(claims.STRICT_ENV, "0")
    claims.check(True, "true, but forced to fail")
    assert "(forced: DPO_TEACH_CLAIMS=fail): true, but forced to fail" in capsys.readouterr().out


@pytest.mark.parametrize("log", ["{tmp}", "{tmp}/missing/claims.jsonl", None])
def test_a_claims_log_that_cannot_be_written_is_named(monkeypatch, tmp_path, log):
    """A folder or a missing folder raised IsADirectoryError or FileNotFoundError from `open`; no log at all recorded
    nothing and took every claim as failed, without a word."""
    monkeypatch.setenv(claims.MODE_ENV, "record")
    monkeypatch.setenv(claims.STRICT_ENV, "0")
    if log is None:
        monkeypatch.delenv(claims.LOG_ENV, raising=False)
    else:
        monkeypatch.setenv(claims.LOG_ENV, log.format(tmp=tmp_path))
    with pytest.raises(claims.ClaimSettingError, match=rf"{claims.LOG_ENV}.*; set it to a file path"):
        claims.check(True, "holds")


def test_a_claims_log_under_home_is_written_there(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv(claims.MODE_ENV, "record")
    monkeypatch.setenv(claims.STRICT_ENV, "0")
    monkeypatch.setenv(claims.LOG_ENV, "~/claims.jsonl")
    claims.check(True, "holds")
    assert '"held": true' in (tmp_path / "claims.jsonl").read_text()
