"""``python -m reference`` (the README's ten-second install check) runs and every form agrees."""

from __future__ import annotations

import subprocess
import sys


def test_tour_prints_every_form_and_succeeds():
    done = subprocess.run([sys.executable, "-m", "reference"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    for form in ("naive", "tiled", "recurrent", "parallel", "chunked_backward (Alg. 2)", "materialised"):
        assert form in done.stdout
    assert "worst error" in done.stdout


def test_tour_fails_loudly_when_a_form_is_wrong(monkeypatch, capsys):
    """Break one form on purpose: the tour must report it and return 1, not print a happy table."""
    import reference.__main__ as tour
    from reference import linear_attention

    real = linear_attention.chunked
    monkeypatch.setattr(linear_attention, "chunked", lambda *a, **kw: (real(*a, **kw)[0] * 1.01, None))
    assert tour.main([]) == 1
    assert "disagrees" in capsys.readouterr().err
