"""The command line: train with a summary table, resume from the store, clear errors."""
from rmpm.cli import main


def test_train_prints_summary_and_resumes(tmp_path, capsys):
    args = ["train", "--profile", "smoke", "--reference", "--device", "cpu", "--store", str(tmp_path)]
    assert main(args) == 0
    first = capsys.readouterr().out.splitlines()
    rows = [l for l in first if "fashion_mnist" in l]
    assert first[0].split()[:5] == ["key", "dataset", "arch", "train", "test"]
    assert len(rows) == 3 and all(l.endswith("trained") for l in rows)
    assert main(args) == 0  # second run: nothing is retrained
    again = [l for l in capsys.readouterr().out.splitlines() if "fashion_mnist" in l]
    assert len(again) == 3 and all(l.endswith("store") for l in again)
    assert [l.split()[:5] for l in again] == [l.split()[:5] for l in rows]
    assert main(["store", "ls", "--store", str(tmp_path)]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 3


def test_bad_factor_is_a_clear_error(tmp_path, capsys):
    assert main(["train", "--profile", "smoke", "--factor", "colour", "--store", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "rmpm train: error: factor='colour' is not allowed; choose one of:" in err
    assert "'init_seed'" in err
