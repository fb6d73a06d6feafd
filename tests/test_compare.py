"""refllm.tools.compare: logits files and llama-perplexity's KL-divergence statistics.

No model files: every input is built here, and the expected numbers are worked out by hand
or by a direct whole-array float64 formula written independently of the module.
"""

from __future__ import annotations

import errno
import json
import math
import os
import zipfile

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from refllm.errors import RefllmError
from refllm.tools import compare
from refllm.tools.compare import (
    CompareError,
    check_same_tokens,
    compare_logits,
    format_report,
    load_logits,
    per_position_delta_p,
    per_position_kld,
    save_logits,
    top1_margin_agreement,
)

LN2 = math.log(2.0)


def random_logits(seed: int, n_rows: int = 6, n_vocab: int = 11, scale: float = 3.0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal((n_rows, n_vocab)) * scale).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------------------------

def test_identical_logits_give_zero_divergence_and_full_agreement():
    logits = random_logits(1)
    tokens = np.array([3, 1, 4, 1, 5, 9], dtype=np.int32)
    stats = compare_logits(logits, logits.copy(), tokens=tokens)
    assert stats["n_positions"] == 6
    assert stats["kld_mean"] == 0.0
    assert stats["kld_max"] == 0.0
    assert stats["kld_p99"] == 0.0
    assert stats["kld_median"] == 0.0
    assert stats["nmse"] == 0.0
    assert stats["same_top1_pct"] == 100.0
    assert stats["rms_dp_pct"] == 0.0
    assert stats["max_abs_dlogit"] == 0.0
    assert stats["identical_rows"] == 6


def test_hand_computed_two_positions_three_tokens():
    # Row 0: ref softmax [1/2, 1/4, 1/4], test [1/4, 1/2, 1/4]: top-1 differs.
    #   KL = 1/2 ln(2) + 1/4 ln(1/2) + 0 = ln(2)/4.
    # Row 1: test is ref plus 5 everywhere: the same distribution, KL = 0, same top-1.
    # tokens [2, 1]: row 0 predicts token 1: Δp = 1/2 - 1/4 = 1/4; row 1 has no next token.
    ref = np.array([[LN2, 0.0, 0.0], [0.0, 0.0, LN2]])
    test = np.array([[0.0, LN2, 0.0], [5.0, 5.0, 5.0 + LN2]])
    tokens = np.array([2, 1])

    np.testing.assert_allclose(per_position_kld(ref, test), [LN2 / 4, 0.0], rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(per_position_delta_p(ref, test, tokens), [0.25], rtol=1e-12)

    stats = compare_logits(ref, test, tokens=tokens)
    assert stats["n_positions"] == 2
    assert stats["kld_mean"] == pytest.approx(LN2 / 8, rel=1e-12)
    assert stats["kld_max"] == pytest.approx(LN2 / 4, rel=1e-12)
    assert stats["kld_median"] == pytest.approx(LN2 / 8, rel=1e-12)
    # llama.cpp's percentile: sorted [0, ln2/4], p = 0.99 * (2 - 1): 0.01 * 0 + 0.99 * ln2/4.
    assert stats["kld_p99"] == pytest.approx(0.99 * LN2 / 4, rel=1e-12)
    assert stats["same_top1_pct"] == 50.0
    assert stats["rms_dp_pct"] == pytest.approx(25.0, rel=1e-12)
    # ref values {ln2, 0, 0, 0, 0, ln2}: mean ln2/3, sum of squared deviations 4/3 ln2^2.
    # test - ref: row 0 [-ln2, ln2, 0], row 1 [5, 5, 5]: sum of squares 2 ln2^2 + 75.
    assert stats["nmse"] == pytest.approx((2 * LN2**2 + 75) / (4 / 3 * LN2**2), rel=1e-12)
    assert stats["max_abs_dlogit"] == pytest.approx(5.0, rel=1e-12)
    assert stats["identical_rows"] == 0


def test_identical_rows_count_exact_rows_after_rounding_to_the_references_precision():
    ref = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], np.float32)
    test = ref + np.array([[0.0], [1e-4], [1.0]], np.float32)     # row 1 rounds back in float16
    assert compare_logits(ref, test)["identical_rows"] == 1
    assert compare_logits(ref, test, ref_precision=np.float16)["identical_rows"] == 2


def test_kld_is_ref_against_test_not_the_reverse():
    # KL is asymmetric; with p = [0.9, 0.1] and q = [0.5, 0.5] the two directions differ.
    ref = np.log(np.array([[0.9, 0.1]]))
    test = np.log(np.array([[0.5, 0.5]]))
    expected = 0.9 * math.log(0.9 / 0.5) + 0.1 * math.log(0.1 / 0.5)
    reverse = 0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)
    assert per_position_kld(ref, test)[0] == pytest.approx(expected, rel=1e-12)
    assert per_position_kld(ref, test)[0] != pytest.approx(reverse, rel=1e-3)


def test_delta_p_sign_is_test_minus_ref():
    ref = np.log(np.array([[0.5, 0.5], [0.5, 0.5]]))
    test = np.log(np.array([[0.8, 0.2], [0.5, 0.5]]))
    # Row 0 predicts tokens[1] = 0: test gives it 0.8, ref 0.5.
    assert per_position_delta_p(ref, test, [1, 0])[0] == pytest.approx(0.3, rel=1e-12)
    assert per_position_delta_p(ref, test, [1, 1])[0] == pytest.approx(-0.3, rel=1e-12)


def test_statistics_match_whole_array_formulas_when_computed_in_small_blocks(monkeypatch):
    # Blocks of one row: every block loop must still cover every row exactly once.
    monkeypatch.setattr(compare, "_VALUES_PER_BLOCK", 1)
    ref = random_logits(2, n_rows=9, n_vocab=7)
    test = ref + random_logits(3, n_rows=9, n_vocab=7, scale=0.5)
    tokens = np.array([0, 6, 2, 3, 3, 1, 5, 4, 2])

    def softmax(x):
        e = np.exp(x.astype(np.float64) - x.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    p, q = softmax(ref), softmax(test)
    kld = np.sum(p * np.log(p / q), axis=1)
    rows = np.arange(8)
    delta_p = q[rows, tokens[1:]] - p[rows, tokens[1:]]
    ref64, test64 = ref.astype(np.float64), test.astype(np.float64)
    nmse = np.mean((test64 - ref64) ** 2) / np.var(ref64)   # check-nmse.py's calculate_nmse

    np.testing.assert_allclose(per_position_kld(ref, test), kld, rtol=1e-10)
    np.testing.assert_allclose(per_position_delta_p(ref, test, tokens), delta_p, rtol=1e-10, atol=1e-15)
    stats = compare_logits(ref, test, tokens=tokens)
    assert stats["kld_mean"] == pytest.approx(kld.mean(), rel=1e-10)
    assert stats["kld_max"] == pytest.approx(kld.max(), rel=1e-10)
    assert stats["kld_median"] == pytest.approx(np.sort(kld)[4], rel=1e-10)   # 9 values: the 5th
    fraction = 0.99 * (9 - 1)
    low = int(fraction)
    sorted_kld = np.sort(kld)
    p99 = (1 - (fraction - low)) * sorted_kld[low] + (fraction - low) * sorted_kld[low + 1]
    assert stats["kld_p99"] == pytest.approx(p99, rel=1e-10)
    assert stats["rms_dp_pct"] == pytest.approx(100 * np.sqrt(np.mean(delta_p**2)), rel=1e-10)
    assert stats["nmse"] == pytest.approx(nmse, rel=1e-10)
    assert stats["max_abs_dlogit"] == pytest.approx(np.max(np.abs(test64 - ref64)), rel=1e-12)
    same = np.mean(ref.argmax(axis=1) == test.argmax(axis=1)) * 100
    assert stats["same_top1_pct"] == pytest.approx(same)


def test_same_top1_breaks_ties_by_first_index():
    # ref ties tokens 0 and 1; the first index wins, as in perplexity.cpp's strict '>' scan.
    ref = np.array([[2.0, 2.0, 0.0]])
    assert compare_logits(ref, np.array([[2.0, 1.0, 0.0]]))["same_top1_pct"] == 100.0
    assert compare_logits(ref, np.array([[1.0, 2.0, 0.0]]))["same_top1_pct"] == 0.0


def test_positions_select_rows_and_delta_p_skips_the_last_row():
    ref = random_logits(4, n_rows=4, n_vocab=5)
    test = random_logits(5, n_rows=4, n_vocab=5)
    tokens = np.array([1, 2, 3, 4])
    kld = per_position_kld(ref, test)
    delta_p = per_position_delta_p(ref, test, tokens)                 # rows 0..2

    second_half = compare_logits(ref, test, tokens=tokens, positions=np.array([2, 3]))
    assert second_half["n_positions"] == 2
    assert second_half["kld_mean"] == pytest.approx(kld[2:].mean(), rel=1e-12)
    assert second_half["rms_dp_pct"] == pytest.approx(100 * abs(delta_p[2]), rel=1e-12)

    mask = np.array([True, False, False, True])
    masked = compare_logits(ref, test, tokens=tokens, positions=mask)
    assert masked["kld_max"] == pytest.approx(max(kld[0], kld[3]), rel=1e-12)
    assert masked["rms_dp_pct"] == pytest.approx(100 * abs(delta_p[0]), rel=1e-12)

    only_last = compare_logits(ref, test, tokens=tokens, positions=[3])
    assert only_last["rms_dp_pct"] is None


def test_next_tokens_give_delta_p_of_rows_that_are_not_consecutive():
    """A compact reference keeps some rows only: with the token after each kept row, Δp is the
    one of those rows in the full comparison, and rows nothing followed (-1) are left out."""
    ref = random_logits(8, n_rows=5, n_vocab=7)
    test = random_logits(9, n_rows=5, n_vocab=7)
    tokens = np.array([1, 2, 3, 4, 5])
    kept = np.array([0, 2, 4])
    full = compare_logits(ref, test, tokens=tokens, positions=kept)
    following = np.append(tokens, -1)[kept + 1]                            # [2, 4, -1]
    compact = compare_logits(ref[kept], test[kept], next_tokens=following)
    assert compact["rms_dp_pct"] == pytest.approx(full["rms_dp_pct"], rel=1e-12)
    assert compact["kld_mean"] == pytest.approx(full["kld_mean"], rel=1e-12)
    assert compare_logits(ref[kept], test[kept], next_tokens=[-1, -1, -1])["rms_dp_pct"] is None
    with pytest.raises(CompareError, match="next_tokens must be 3 token ids below 7"):
        compare_logits(ref[kept], test[kept], next_tokens=[1, 7, -1])


def test_rms_dp_is_none_without_tokens_or_with_one_position():
    logits = random_logits(6, n_rows=3)
    assert compare_logits(logits, logits + 1)["rms_dp_pct"] is None
    one_row = random_logits(7, n_rows=1)
    assert compare_logits(one_row, one_row * 2, tokens=[4])["rms_dp_pct"] is None
    assert per_position_delta_p(one_row, one_row * 2, [4]).shape == (0,)


def test_nmse_of_a_constant_reference():
    constant = np.zeros((2, 3))
    assert compare_logits(constant, constant)["nmse"] == 0.0
    assert compare_logits(constant, constant + np.eye(2, 3))["nmse"] is None


@settings(max_examples=60, deadline=None)
@given(
    shape=st.tuples(st.integers(1, 5), st.integers(1, 8)),
    data=st.data(),
)
def test_kld_is_non_negative_and_ignores_a_constant_added_to_a_row(shape, data):
    values = st.floats(-30, 30, allow_nan=False, width=64)
    ref = data.draw(arrays(np.float64, shape, elements=values))
    test = data.draw(arrays(np.float64, shape, elements=values))
    shifts = data.draw(arrays(np.float64, (shape[0], 1), elements=st.floats(-100, 100, width=64)))

    kld = per_position_kld(ref, test)
    assert np.all(kld >= -1e-12)
    np.testing.assert_allclose(per_position_kld(ref + shifts, test), kld, atol=1e-9)
    np.testing.assert_allclose(per_position_kld(ref, test - shifts), kld, atol=1e-9)


def test_compare_refuses_mismatched_or_broken_arrays():
    logits = random_logits(8, n_rows=3, n_vocab=5)
    with pytest.raises(CompareError, match=r"ref logits are float32 \[3, 5\] but test logits are float32 \[3, 4\]"):
        compare_logits(logits, logits[:, :4])
    with pytest.raises(CompareError, match="non-finite"):
        compare_logits(logits, np.where(logits > 0, np.inf, logits))
    with pytest.raises(CompareError, match="expected 3 integer ids"):
        compare_logits(logits, logits, tokens=[1, 2])
    with pytest.raises(CompareError, match=r"outside \[0, 5\)"):
        compare_logits(logits, logits, tokens=[1, 2, 5])
    with pytest.raises(CompareError, match="positions"):
        compare_logits(logits, logits, positions=[0, 3])
    with pytest.raises(CompareError, match="no rows"):
        compare_logits(logits, logits, positions=np.zeros(3, dtype=bool))


def test_check_same_tokens():
    check_same_tokens(np.array([1, 2, 3], dtype=np.int32), np.array([1, 2, 3], dtype=np.int64))
    with pytest.raises(CompareError, match="at position 2 ref.npz has 3, test.npz has 4"):
        check_same_tokens([1, 2, 3, 5], [1, 2, 4, 5], ref_name="ref.npz", test_name="test.npz")
    with pytest.raises(CompareError, match="ref has 3 tokens but test has 2; they differ from position 2"):
        check_same_tokens([1, 2, 3], [1, 2])


def test_top1_margin_agreement():
    # ref margins per row: 3.0, 0.5, 1.0 (exactly the threshold), 2.0.
    ref = np.array([[5.0, 2.0, 0.0],
                    [1.0, 1.5, 0.0],
                    [0.0, 0.0, 1.0],
                    [0.0, 2.0, 0.0]], dtype=np.float32)
    test = np.array([[4.0, 1.0, 0.0],     # agrees
                     [9.0, 0.0, 0.0],     # disagrees, but ref is not confident there
                     [2.0, 0.0, 1.0],     # disagrees
                     [0.0, 1.0, 0.5]], dtype=np.float32)   # agrees
    result = top1_margin_agreement(ref, test, min_margin=1.0)
    assert result.positions.tolist() == [0, 2, 3]
    assert result.agrees.tolist() == [True, False, True]
    assert result.disagreeing_positions.tolist() == [2]
    assert result.all_agree is False
    assert top1_margin_agreement(ref, ref, min_margin=1.0).all_agree is True
    assert top1_margin_agreement(ref, test, min_margin=2.5).positions.tolist() == [0]
    one_token = np.zeros((2, 1))
    assert top1_margin_agreement(one_token, one_token, min_margin=1.0).positions.tolist() == [0, 1]


def test_report_and_json():
    ref = np.array([[LN2, 0.0, 0.0], [0.0, 0.0, LN2]])
    test = np.array([[0.0, LN2, 0.0], [5.0, 5.0, 5.0 + LN2]])
    stats = compare_logits(ref, test, tokens=[2, 1])
    assert all(type(value) in (int, float) for value in stats.values())
    assert json.loads(json.dumps(stats, allow_nan=False)) == stats

    report = format_report(stats)
    lines = report.splitlines()
    assert len(lines) == len(stats)
    assert len({line.index(" : ") for line in lines}) == 1          # one column of values
    assert "Mean KLD" in report and f"{LN2 / 8:.6e}" in report
    assert "25.000 %" in report and "50.000 %" in report
    assert report.isascii()
    no_tokens = format_report(compare_logits(ref, test))
    assert "n/a" in no_tokens


# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------

def test_save_and_load_round_trip_with_provenance(tmp_path):
    path = tmp_path / "out"             # no .npz suffix: the name is kept as given
    tokens = np.array([1, 7, 3], dtype=np.int64)
    logits = random_logits(9, n_rows=3, n_vocab=8)
    save_logits(path, tokens, logits, model_sha256="ab" * 32, n_ctx=512)
    assert sorted(os.listdir(tmp_path)) == ["out"]
    loaded_tokens, loaded_logits = load_logits(path)
    assert loaded_tokens.dtype == np.int32 and loaded_tokens.tolist() == [1, 7, 3]
    assert loaded_logits.dtype == np.float32
    np.testing.assert_array_equal(loaded_logits, logits)
    with np.load(path, allow_pickle=False) as archive:
        assert str(archive["model_sha256"]) == "ab" * 32
        assert int(archive["n_ctx"]) == 512


def test_save_keeps_float16_and_load_accepts_float16_golden_files(tmp_path):
    logits16 = random_logits(10, n_rows=2, n_vocab=4).astype(np.float16)
    golden = tmp_path / "golden.npz"
    np.savez(golden, tokens=np.array([0, 3], dtype=np.int32), logits=logits16)
    tokens, logits = load_logits(golden)
    assert logits.dtype == np.float32
    np.testing.assert_array_equal(logits, logits16.astype(np.float32))

    saved = tmp_path / "saved.npz"
    save_logits(saved, [0, 3], logits16)
    with np.load(saved) as archive:
        assert archive["logits"].dtype == np.float16
    save_logits(saved, [0, 3], logits16.astype(np.float64))        # anything else becomes float32
    with np.load(saved) as archive:
        assert archive["logits"].dtype == np.float32


def test_save_replaces_an_existing_file(tmp_path):
    path = tmp_path / "x.npz"
    save_logits(path, [0], np.zeros((1, 2), dtype=np.float32))
    save_logits(path, [1], np.ones((1, 2), dtype=np.float32))
    tokens, logits = load_logits(path)
    assert tokens.tolist() == [1] and logits.tolist() == [[1.0, 1.0]]
    assert os.listdir(tmp_path) == ["x.npz"]


def test_save_with_bad_logits_keeps_the_old_file(tmp_path):
    path = tmp_path / "x.npz"
    save_logits(path, [0, 1], np.zeros((2, 3), dtype=np.float32))
    before = path.read_bytes()
    unsaveable = np.array([[object(), 1.0, 2.0], [0.0, 1.0, 2.0]], dtype=object)
    for bad_logits in (unsaveable, np.full((2, 3), np.nan), np.zeros((3, 3))):
        with pytest.raises(CompareError, match="x.npz"):
            save_logits(path, [0, 1], bad_logits)
    with pytest.raises(CompareError, match="provenance 'note'"):
        save_logits(path, [0, 1], np.zeros((2, 3)), note=object())
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["x.npz"]


def test_save_failing_mid_write_keeps_the_old_file_and_leaves_no_temp_file(tmp_path, monkeypatch):
    path = tmp_path / "x.npz"
    save_logits(path, [0, 1], np.zeros((2, 3), dtype=np.float32))
    before = path.read_bytes()

    def savez_then_disk_full(file, **arrays):
        file.write(b"PK\x03\x04 partial archive")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "savez", savez_then_disk_full)
    with pytest.raises(CompareError, match=r"x\.npz: cannot write \(No space left on device\)"):
        save_logits(path, [1, 2], np.ones((2, 3), dtype=np.float32))
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["x.npz"]

    with pytest.raises(CompareError):
        save_logits(tmp_path / "new.npz", [1], np.ones((1, 3), dtype=np.float32))
    assert os.listdir(tmp_path) == ["x.npz"]


def test_save_into_a_missing_directory_is_one_clear_error(tmp_path):
    with pytest.raises(CompareError, match="cannot write"):
        save_logits(tmp_path / "no" / "x.npz", [0], np.zeros((1, 2)))


def write_npz(path, **arrays):
    with open(path, "wb") as file:
        np.savez(file, **arrays)


GOOD_TOKENS = np.array([1, 2, 3], dtype=np.int32)
GOOD_LOGITS = np.zeros((3, 5), dtype=np.float32)


def make_missing_tokens(path):
    write_npz(path, logits=GOOD_LOGITS)


def make_missing_logits(path):
    write_npz(path, tokens=GOOD_TOKENS)


def make_tokens_2d(path):
    write_npz(path, tokens=GOOD_TOKENS.reshape(1, 3), logits=GOOD_LOGITS)


def make_tokens_float(path):
    write_npz(path, tokens=GOOD_TOKENS.astype(np.float32), logits=GOOD_LOGITS)


def make_logits_1d(path):
    write_npz(path, tokens=GOOD_TOKENS, logits=GOOD_LOGITS.reshape(-1))


def make_logits_3d(path):
    write_npz(path, tokens=GOOD_TOKENS, logits=GOOD_LOGITS.reshape(3, 5, 1))


def make_logits_int(path):
    write_npz(path, tokens=GOOD_TOKENS, logits=GOOD_LOGITS.astype(np.int32))


def make_length_mismatch(path):
    write_npz(path, tokens=np.arange(4, dtype=np.int32), logits=GOOD_LOGITS)


def make_empty(path):
    write_npz(path, tokens=np.zeros(0, dtype=np.int32), logits=np.zeros((0, 5), dtype=np.float32))


def make_nan(path):
    logits = GOOD_LOGITS.copy()
    logits[1, 2] = np.nan
    write_npz(path, tokens=GOOD_TOKENS, logits=logits)


def make_inf(path):
    logits = GOOD_LOGITS.copy()
    logits[2, 0] = -np.inf
    write_npz(path, tokens=GOOD_TOKENS, logits=logits)


def make_float64_beyond_float32(path):
    write_npz(path, tokens=GOOD_TOKENS, logits=np.full((3, 5), 1e300))


def make_token_outside_vocab(path):
    write_npz(path, tokens=np.array([1, 5, 2], dtype=np.int32), logits=GOOD_LOGITS)


def make_negative_token(path):
    write_npz(path, tokens=np.array([1, -1, 2], dtype=np.int32), logits=GOOD_LOGITS)


def make_text_file(path):
    path.write_text("tokens,logits\n1,2\n")


def make_pk_but_not_zip(path):
    path.write_bytes(b"PK but not a zip archive")


def make_empty_file(path):
    path.write_bytes(b"")


def make_npy_file(path):
    with open(path, "wb") as file:
        np.save(file, GOOD_LOGITS)


def make_pickled_object_array(path):
    write_npz(path, tokens=GOOD_TOKENS, logits=np.array([[1.0, "a"]] * 3, dtype=object))


def make_truncated_zip(path):
    write_npz(path, tokens=GOOD_TOKENS, logits=GOOD_LOGITS)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def make_corrupt_member(path):
    broken_npy = b"\x93NUMPY\x01\x00\x10\x00{'descr': oops}\n"   # npy magic, garbage header
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("tokens.npy", broken_npy)
        archive.writestr("logits.npy", broken_npy)


def make_member_not_npy(path):
    # A member without the npy magic: numpy hands back its raw bytes.
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("tokens.npy", b"plain bytes")
        archive.writestr("logits.npy", b"plain bytes")


def make_directory(path):
    path.mkdir()


BAD_FILES = [
    (make_missing_tokens, "no key 'tokens'"),
    (make_missing_logits, "no key 'logits'"),
    (make_tokens_2d, r"'tokens' is int32 \[1, 3\] \(expected a 1-D integer"),
    (make_tokens_float, r"'tokens' is float32 \[3\]"),
    (make_logits_1d, r"'logits' is float32 \[15\] \(expected a 2-D float"),
    (make_logits_3d, r"'logits' is float32 \[3, 5, 1\]"),
    (make_logits_int, r"'logits' is int32 \[3, 5\]"),
    (make_length_mismatch, r"'logits' is float32 \[3, 5\] but 'tokens' has 4 entries \(expected one row per token\)"),
    (make_empty, "at least one token"),
    (make_nan, "non-finite values in 1 of 3 rows, the first at row 1"),
    (make_inf, "non-finite values in 1 of 3 rows, the first at row 2"),
    (make_float64_beyond_float32, "non-finite"),
    (make_token_outside_vocab, r"id 5 at position 1 \(expected ids in \[0, 5\)"),
    (make_negative_token, "id -1 at position 1"),
    (make_text_file, r"at byte 0: b'tokens' is not a zip signature \(expected an npz archive\)"),
    (make_pk_but_not_zip, r"at byte 0: b'PK but' is not a zip signature"),
    (make_empty_file, r"is empty \(expected an npz archive\)"),
    (make_npy_file, "single .npy array, not an npz archive"),
    (make_pickled_object_array, "key 'logits' cannot be read"),
    (make_truncated_zip, "cannot be read as an npz archive"),
    (make_corrupt_member, "key 'tokens' cannot be read"),
    (make_member_not_npy, r"key 'tokens' is \|S11 \[\] \(expected a 1-D integer"),
    (make_directory, r"cannot be read \(Is a directory\)"),
]


@pytest.mark.parametrize("make_file, expected", BAD_FILES, ids=[make.__name__[5:] for make, _ in BAD_FILES])
def test_load_refuses_bad_files_with_one_line_naming_the_file(tmp_path, make_file, expected):
    path = tmp_path / "bad_input.npz"
    make_file(path)
    with pytest.raises(CompareError, match=expected) as caught:
        load_logits(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: ")
    assert "\n" not in message
    assert isinstance(caught.value, RefllmError) and isinstance(caught.value, ValueError)


def test_load_missing_file(tmp_path):
    path = tmp_path / "absent.npz"
    with pytest.raises(CompareError, match=r"absent\.npz: no such file") as caught:
        load_logits(path)
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


def test_coarse_kld_is_a_lower_bound_that_tightens_with_k():
    from refllm.tools.compare import per_position_coarse_kld, per_position_kld
    rng = np.random.default_rng(3)
    ref = rng.standard_normal((6, 50)) * 3
    test = ref + rng.standard_normal((6, 50)) * 0.3
    full = per_position_kld(ref, test)
    lse = np.log(np.exp(ref).sum(axis=1))
    bounds = []
    for k in (1, 5, 49, 50):
        ids = np.argsort(-ref, axis=1)[:, :k]
        coarse = per_position_coarse_kld(ids, np.take_along_axis(ref, ids, axis=1), lse, test)
        assert np.all(coarse <= full + 1e-12)
        bounds.append(coarse.sum())
    assert bounds == sorted(bounds) and bounds[0] < bounds[-1]
    np.testing.assert_allclose(bounds[-1], full.sum(), rtol=1e-9)      # all tokens kept: exact


def test_load_reference_reads_logits_files_and_compact_golden_files(tmp_path):
    from pathlib import Path

    from refllm.tools.compare import load_reference
    golden = Path(__file__).resolve().parent.parent / "golden" / "logits" / "synth-qwen2.npz"
    tokens, rows, positions = load_reference(golden)
    with np.load(golden) as g:
        assert tokens.tolist() == g["tokens"].tolist() and positions.tolist() == g["positions"].tolist()
        np.testing.assert_array_equal(rows, g["rows"].astype(np.float32))
    save_logits(tmp_path / "full.npz", np.array([1, 2], np.int32), np.zeros((2, 4), np.float32))
    tokens, rows, positions = load_reference(tmp_path / "full.npz")
    assert positions.tolist() == [0, 1] and rows.shape == (2, 4)
    np.savez(tmp_path / "bad.npz", tokens=np.array([1, 2, 3]), positions=np.array([2, 1]), rows=np.zeros((2, 4)))
    with pytest.raises(CompareError, match="bad.npz: key 'positions'"):
        load_reference(tmp_path / "bad.npz")
    np.savez(tmp_path / "none.npz", tokens=np.array([1, 2, 3]))
    with pytest.raises(CompareError, match="none.npz: has neither"):
        load_reference(tmp_path / "none.npz")
