import pytest
"""The command line: train with a summary table, resume from the store, clear errors."""
from rmpm.cli import main


@pytest.mark.trains
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


def _plan(capsys):
    lines = capsys.readouterr().out.splitlines()
    total = next(l for l in lines if l.startswith("total")).split()[1:]
    return dict(zip(["recipes", "trained", "evaluated", "to_train", "epochs"], map(int, total)))


@pytest.mark.trains
def test_dry_run_and_shards_cover_the_profile(tmp_path, capsys):
    """Job-array use: --dry-run trains nothing; shards 0/2 and 1/2 together train
    every recipe once, each run seeing what the other already stored."""
    base = ["train", "--profile", "smoke", "--reference", "--device", "cpu",
            "--store", str(tmp_path)]
    assert main(base + ["--dry-run"]) == 0
    plan = _plan(capsys)
    assert plan["recipes"] == 3 and plan["to_train"] == 3 and plan["trained"] == 0
    assert not (tmp_path / "models").exists()  # a dry run writes nothing
    assert main(base + ["--shard", "0/2"]) == 0
    assert len([l for l in capsys.readouterr().out.splitlines() if "fashion_mnist" in l]) == 2
    assert main(base + ["--dry-run"]) == 0
    plan = _plan(capsys)
    assert (plan["trained"], plan["evaluated"], plan["to_train"]) == (2, 2, 1)
    assert main(base + ["--shard", "1/2"]) == 0
    capsys.readouterr()
    assert main(base + ["--dry-run"]) == 0
    assert _plan(capsys)["to_train"] == 0


def test_bad_shard_is_a_clear_error(tmp_path, capsys):
    base = ["train", "--profile", "smoke", "--dry-run", "--store", str(tmp_path)]
    assert main(base + ["--shard", "2"]) == 2
    assert "--shard='2' must look like I/N" in capsys.readouterr().err
    assert main(base + ["--shard", "2/2"]) == 2
    assert "shard index=2 must be <= 1" in capsys.readouterr().err


def test_calibrate_prints_rates_per_claim_and_level(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("RMPM_CACHE", str(tmp_path))
    assert main(["calibrate", "--profile", "smoke", "--n-sim", "3"]) in (0, 1)
    out = capsys.readouterr().out
    assert "profile smoke: 1 data set(s) (fashion_mnist) x 2 replicates x 12 factors" in out
    for claim in ("C1", "C2", "C3", "C4"):
        assert claim in out
    for noise in ("iid", "unequal_heavy", "clustered", "shared", "combined"):
        assert f"FPR {noise}" in out
    assert "power (iid)" in out and "partly or better" in out and "premise holds" in out
    assert "29 scenarios took" in out and "0 reused from the cache" in out
    # C4 is tested on its premise, in the per-scenario rows as in the summary
    detail = out.split("Every scenario and level")[1].split("Summary:")[0]
    c4 = [ln for ln in detail.splitlines() if ln.split()[:1] == ["C4"]]
    assert c4 and all("premise holds" in ln and "supported" not in ln for ln in c4)
    # a rebuild reuses every simulation; a what-if design is simulated anew
    assert main(["calibrate", "--profile", "smoke", "--n-sim", "3"]) in (0, 1)
    assert "29 reused from the cache" in capsys.readouterr().out
    assert main(["calibrate", "--profile", "smoke", "--n-sim", "3", "--datasets", "a", "b",
                 "c", "--replicates", "3"]) in (0, 1)
    out = capsys.readouterr().out
    assert "(what if: --datasets, --replicates): 3 data set(s) (a, b, c) x 3 replicates" in out
    assert "0 reused from the cache" in out
    assert main(["calibrate", "--profile", "smoke", "--n-sim", "3", "--datasets", "a", "a"]) == 2
    assert "names a data set twice" in capsys.readouterr().err
    assert main(["calibrate", "--profile", "smoke", "--n-sim", "0"]) == 2
    assert "--n-sim=0 must be >= 1" in capsys.readouterr().err
