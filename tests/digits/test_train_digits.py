"""`python -m service train-digits` (what `make train-digits` runs): files written, accuracy printed, --full offline."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from service.cli import main as cli_main
from service.digits.model import DigitClassifier, metrics_path_for


def test_train_digits_writes_model_and_metrics_and_prints_accuracy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "tiny.npz"
    # A deliberately tiny run (the shipped model uses the defaults: 256 hidden units, 30 epochs, 9 copies).
    code = cli_main(["train-digits", "--out", str(out), "--hidden", "16", "--epochs", "2", "--augment", "1", "--quiet"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "held-out accuracy:" in printed and "/1000 held-out digits" in printed

    metrics = json.loads(metrics_path_for(out).read_text())
    assert metrics["model_file"] == "tiny.npz"
    assert metrics["train_size"] == 4000 and metrics["train_size_augmented"] == 8000 and metrics["heldout_size"] == 1000
    assert f"{metrics['heldout_accuracy'] * 100:.2f}%" in printed
    assert metrics["heldout_accuracy"] > 0.5  # a sanity check: far above chance even for 2 epochs of a tiny net
    assert len(metrics["confusion_matrix"]) == 10 and set(metrics["per_class"]) == {str(d) for d in range(10)}
    assert metrics["config"]["hidden"] == [16] and metrics["architecture"]["layers"] == [784, 16, 10]
    assert {"python", "numpy", "scikit-learn", "mlxtend"} <= set(metrics["versions"])

    model = DigitClassifier.load(out)
    assert model.meta["heldout_accuracy"] == metrics["heldout_accuracy"]


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_served_forward_pass_matches_sklearn(tmp_path: Path) -> None:
    """The numpy forward pass used for serving gives exactly MLPClassifier's probabilities."""
    from sklearn.neural_network import MLPClassifier

    rng = np.random.default_rng(0)
    x = rng.random((200, 784)).astype(np.float32)
    y = np.arange(200) % 10
    clf = MLPClassifier((12, 8), max_iter=5, random_state=0).fit(x, y)
    model = DigitClassifier(list(clf.coefs_), list(clf.intercepts_), activation=clf.activation)
    model.save(tmp_path / "m.npz")
    loaded = DigitClassifier.load(tmp_path / "m.npz")
    np.testing.assert_allclose(loaded.predict_proba(x[:20]), clf.predict_proba(x[:20]), atol=1e-5)


def test_full_without_network_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import urllib.error

    import sklearn.datasets

    def offline(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(sklearn.datasets, "fetch_openml", offline)
    out = tmp_path / "full.npz"
    assert cli_main(["train-digits", "--full", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "could not download MNIST from OpenML" in err and "without it, train on the bundled" in err
    assert not out.exists()


def test_bad_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["train-digits", "--hidden", "a,b"]) == 2
    assert "--hidden" in capsys.readouterr().err
