"""reference.data: the standard-library corpus (fixed selection, deterministic split) and MQAR."""

from __future__ import annotations

import sysconfig
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from reference import data


def test_selection_is_fixed_sorted_and_split():
    assert list(data.FILES) == sorted(data.FILES) and len(set(data.FILES)) == len(data.FILES)
    assert data.HELD_OUT == data.FILES[7::8]
    assert set(data.TRAIN) | set(data.HELD_OUT) == set(data.FILES)
    assert not set(data.TRAIN) & set(data.HELD_OUT)
    assert "argparse.py" in data.TRAIN and "_pydecimal.py" in data.TRAIN


def test_corpus_is_the_files_bytes_in_order():
    root = Path(sysconfig.get_paths()["stdlib"])
    held_out = data.corpus("held_out")
    expected = b"\n\n".join((root / name).read_bytes() for name in data.HELD_OUT)
    assert held_out.dtype == np.uint8 and held_out.tobytes() == expected
    train = data.corpus("train")
    assert train.size > 2_000_000 and held_out.size > 200_000
    assert not train.flags.writeable  # the cached array cannot be changed under another caller
    assert data.corpus("train") is train  # cached


def test_loading_is_fast():
    data._read.cache_clear()
    start = time.perf_counter()
    data.corpus("train"), data.corpus("held_out")
    assert time.perf_counter() - start < 2.0


def test_batches_are_seeded_windows_of_the_corpus():
    train = data.corpus("train")
    a = next(data.batches(train, batch_size=4, seq_len=32, seed=5))
    b = next(data.batches(train, batch_size=4, seq_len=32, seed=5))
    c = next(data.batches(train, batch_size=4, seq_len=32, seed=6))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert a.shape == (4, 33) and a.dtype == np.int64
    text = train.tobytes()
    for row in a:  # each row is a contiguous window of the corpus
        assert text.find(row.astype(np.uint8).tobytes()) >= 0
    rng = np.random.default_rng(5)
    np.testing.assert_array_equal(data.sample_batch(train, batch_size=4, seq_len=32, rng=rng), a)


@given(n=st.integers(1, 6), P=st.integers(1, 64), seed=st.integers(0, 2**16))
def test_mqar_every_answer_is_its_keys_value(n, P, seed):
    tokens, answers = data.mqar(n, num_pairs=P, rng=seed)
    assert tokens.shape == answers.shape == (n, 4 * P) and tokens.dtype == np.uint8
    assert answers.sum() == n * P
    for row, ans in zip(tokens, answers):
        context = dict(zip(row[0 : 2 * P : 2].tolist(), row[1 : 2 * P : 2].tolist()))
        assert len(context) == P  # distinct keys
        assert all(data.KEYS[0] <= k < data.KEYS[1] for k in context)
        assert all(data.VALUES[0] <= v < data.VALUES[1] for v in context.values())
        queries = row[2 * P :: 2].tolist()
        assert sorted(queries) == sorted(context)  # every key asked once
        for t in np.flatnonzero(ans):
            assert t >= 2 * P and row[t] == context[int(row[t - 1])]
    again, _ = data.mqar(n, num_pairs=P, rng=seed)
    np.testing.assert_array_equal(tokens, again)


@pytest.mark.parametrize(
    "call, error",
    [
        (lambda: data.corpus("test"), ValueError),
        (lambda: data.mqar(2, num_pairs=65), ValueError),
        (lambda: data.mqar(0), ValueError),
        (lambda: data.sample_batch(np.zeros(10, np.uint8), batch_size=1, seq_len=10, rng=0), ValueError),
        (lambda: data.sample_batch(np.zeros(100, np.uint8), batch_size=1, seq_len=10, rng=1.5), TypeError),
    ],
)
def test_bad_input(call, error):
    with pytest.raises(error):
        call()
