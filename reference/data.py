r"""Data made here, nothing downloaded: a byte corpus of Python's own sources, and MQAR (``docs/tiny_lm.md``).

**The corpus.** ``FILES`` is a fixed list of standard-library source files present in every CPython
from 3.11 on, read from the running interpreter (``sysconfig.get_paths()["stdlib"]``) as raw bytes.
Sorted by name, every eighth file (positions 7, 15, 23, … of the sorted list: ``HELD_OUT``) is the
held-out split; the rest is training data. Each split is its files' bytes joined by one blank line,
in sorted order. Real text with long-range structure: a name defined at the top of a module is
used hundreds of lines below, indentation nests, docstrings quote the code.

The *selection and the split* are the same on every machine; the *bytes* are those of the
interpreter that runs them, so bits-per-byte figures are stated with the Python version that
measured them (``corpus_info()``). Reading all files takes a few tens of milliseconds; the arrays
are cached and read-only.

**MQAR** (multi-query associative recall, Zoology, arXiv 2312.04927): ``num_pairs`` key-value
pairs, then the keys again in a random order each followed by its value; the model must recall
each value. Keys are bytes 128..191, values 192..255 (outside the corpus's ASCII), so a key never
looks like a value.

Randomness is always explicit: ``np.random.default_rng(seed)`` or a ``np.random.Generator`` passed in.
"""

from __future__ import annotations

import functools
import numbers
import sys
import sysconfig
from pathlib import Path

import numpy as np

from reference._arrays import check_positive_int

__all__ = [
    "FILES",
    "HELD_OUT",
    "TRAIN",
    "corpus",
    "corpus_info",
    "sample_batch",
    "batches",
    "mqar",
    "KEYS",
    "VALUES",
]

# Paths relative to the standard library directory. Every one exists (as ordinary source, not a
# one-line shim) in CPython 3.11, 3.12, 3.13 and 3.14.
FILES = tuple(
    sorted(
        """
        _pydecimal.py argparse.py ast.py asyncio/base_events.py asyncio/tasks.py bdb.py calendar.py
        cmd.py codecs.py collections/__init__.py concurrent/futures/_base.py configparser.py
        contextlib.py copy.py csv.py dataclasses.py difflib.py doctest.py email/message.py enum.py
        fnmatch.py fractions.py ftplib.py functools.py getopt.py gettext.py glob.py gzip.py heapq.py
        hmac.py http/client.py http/server.py imaplib.py inspect.py ipaddress.py json/decoder.py
        json/encoder.py linecache.py locale.py logging/__init__.py mailbox.py multiprocessing/pool.py
        numbers.py operator.py optparse.py os.py pdb.py pickle.py platform.py plistlib.py poplib.py
        pprint.py pydoc.py queue.py quopri.py random.py reprlib.py sched.py secrets.py selectors.py
        shlex.py shutil.py smtplib.py socket.py socketserver.py ssl.py stat.py statistics.py string.py
        subprocess.py sysconfig.py tarfile.py tempfile.py textwrap.py threading.py timeit.py
        tokenize.py tomllib/_parser.py trace.py traceback.py types.py typing.py unittest/case.py
        urllib/parse.py urllib/request.py uuid.py warnings.py weakref.py webbrowser.py
        xml/dom/minidom.py zipapp.py
        """.split()
    )
)
HELD_OUT = FILES[7::8]
TRAIN = tuple(f for f in FILES if f not in HELD_OUT)

KEYS = (128, 192)  # MQAR keys: bytes 128..191
VALUES = (192, 256)  # MQAR values: bytes 192..255


def _stdlib() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


@functools.lru_cache(maxsize=None)
def _read(split: str) -> np.ndarray:
    root = _stdlib()
    names = TRAIN if split == "train" else HELD_OUT
    missing = [n for n in names if not (root / n).is_file()]
    if missing:
        raise FileNotFoundError(
            f"the standard library at {root} lacks {missing}: the corpus needs a full CPython >= 3.11 install"
        )
    blob = b"\n\n".join((root / n).read_bytes() for n in names)
    array = np.frombuffer(blob, dtype=np.uint8).copy()
    array.setflags(write=False)  # cached: nobody may change it under another caller
    return array


def corpus(split: str = "train") -> np.ndarray:
    """The corpus split as a read-only uint8 array ``[N]`` (``"train"`` or ``"held_out"``), cached."""
    if split not in ("train", "held_out"):
        raise ValueError(f"split must be 'train' or 'held_out', got {split!r}")
    return _read(split)


def corpus_info() -> dict:
    """What the corpus is on this machine: Python version, stdlib path, file counts and byte counts."""
    return {
        "python": sys.version.split()[0],
        "stdlib": str(_stdlib()),
        "train_files": len(TRAIN),
        "held_out_files": len(HELD_OUT),
        "train_bytes": int(corpus("train").size),
        "held_out_bytes": int(corpus("held_out").size),
    }


def _generator(seed_or_rng) -> np.random.Generator:
    if isinstance(seed_or_rng, np.random.Generator):
        return seed_or_rng
    if isinstance(seed_or_rng, bool) or not isinstance(seed_or_rng, numbers.Integral):
        raise TypeError(f"rng must be an integer seed or a np.random.Generator, got {seed_or_rng!r}")
    return np.random.default_rng(int(seed_or_rng))


def sample_batch(data: np.ndarray, *, batch_size: int, seq_len: int, rng) -> np.ndarray:
    """``batch_size`` windows of ``seq_len + 1`` consecutive bytes at uniform random offsets.

    Args:
        data: uint8 ``[N]``, ``N > seq_len``.
        rng: a ``np.random.Generator`` (advanced) or an integer seed.

    Returns:
        int64 ``[batch_size, seq_len + 1]``: inputs ``[:, :-1]``, next-byte targets ``[:, 1:]``.
    """
    batch_size, seq_len = check_positive_int("batch_size", batch_size), check_positive_int("seq_len", seq_len)
    if data.ndim != 1 or data.shape[0] <= seq_len:
        raise ValueError(f"data must be 1-D with more than seq_len = {seq_len} entries, got shape {data.shape}")
    starts = _generator(rng).integers(0, data.shape[0] - seq_len, size=batch_size)
    return np.stack([data[s : s + seq_len + 1] for s in starts]).astype(np.int64)


def batches(data: np.ndarray, *, batch_size: int, seq_len: int, seed: int):
    """An endless iterator of ``sample_batch`` windows from ``np.random.default_rng(seed)``: the same stream every run."""
    rng = _generator(seed)
    while True:
        yield sample_batch(data, batch_size=batch_size, seq_len=seq_len, rng=rng)


def mqar(n: int, *, num_pairs: int = 16, rng=0) -> tuple[np.ndarray, np.ndarray]:
    r"""``n`` multi-query associative recall sequences.

    Each sequence is ``k_1 v_1 … k_P v_P`` (``P = num_pairs`` distinct keys, values drawn with
    replacement) followed by the same keys in a random order, each followed by its value:
    length ``L = 4P``.

    Args:
        n: number of sequences.
        num_pairs: ``P`` (at most 64, the number of distinct keys).
        rng: an integer seed or a ``np.random.Generator``.

    Returns:
        ``(tokens, answers)``: uint8 ``[n, 4P]`` and bool ``[n, 4P]``, ``answers[i, t]`` true where
        ``tokens[i, t]`` is a recalled value (predicted from position ``t - 1``, which holds its key).
    """
    n = check_positive_int("n", n)
    P = check_positive_int("num_pairs", num_pairs)
    if P > KEYS[1] - KEYS[0]:
        raise ValueError(f"num_pairs must be at most {KEYS[1] - KEYS[0]} (distinct keys), got {P}")
    g = _generator(rng)
    keys = np.stack([g.permutation(KEYS[1] - KEYS[0])[:P] for _ in range(n)]) + KEYS[0]  # [n, P]
    values = g.integers(VALUES[0], VALUES[1], size=(n, P))
    order = np.stack([g.permutation(P) for _ in range(n)])  # [n, P]
    rows = np.arange(n)[:, None]
    tokens = np.empty((n, 4 * P), dtype=np.uint8)
    tokens[:, 0 : 2 * P : 2], tokens[:, 1 : 2 * P : 2] = keys, values
    tokens[:, 2 * P :: 2], tokens[:, 2 * P + 1 :: 2] = keys[rows, order], values[rows, order]
    answers = np.zeros((n, 4 * P), dtype=bool)
    answers[:, 2 * P + 1 :: 2] = True
    return tokens, answers
