"""benchmarks/gpu_check.py, the one prepared GPU call of issue 14: its CPU dry run goes
through every section, so the script cannot rot between the rare sessions lent a GPU."""
import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest

#: every test here trains a model or runs a notebook (tests/conftest.py)
pytestmark = pytest.mark.trains

ROOT = Path(__file__).resolve().parents[1]
HEX64 = re.compile(r"^[0-9a-f]{64}$")


def _load_script():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up while the class is built
    spec.loader.exec_module(mod)
    return mod


gc = _load_script()


@pytest.fixture(scope="module")
def dry(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpucheck")
    report = gc.main(["--dry-run", "--in-process", "--device", "cpu", "--out", str(out)])
    return out, report


def test_dry_run_runs_every_section(dry):
    out, report = dry
    saved = json.loads((out / "gpu_check.json").read_text())
    assert saved["mode"] == "dry-run" and set(saved["sections"]) == set(gc.SECTIONS)
    for name, s in saved["sections"].items():
        assert s["status"] == "ok", (name, s.get("error"), s.get("traceback"))
    text = (out / "gpu_check.txt").read_text()
    assert all(f"[{name}] ok" in text for name in gc.SECTIONS)
    assert saved["environment"]["torch"] == report["environment"]["torch"]


def test_dry_run_training_members_match_fit(dry):
    tr = dry[1]["sections"]["train"]
    assert tr["members"] == 2 and tr["single_members"] == 2
    assert tr["engines"]["ensemble_amp"]["amp"] is True  # the CUDA default, bf16, taken here too
    for name in ("ensemble_amp", "ensemble_fp32", "single"):
        e = tr["engines"][name]
        assert len(e["test_acc"]) == 2 and all(0 <= a <= 1 for a in e["test_acc"])
        assert e["model_epochs_per_s"] > 0
    m = tr["match"]["ensemble_fp32"]  # on the CPU in fp32, as tests/pipeline/test_ensemble.py demands
    assert m["max_rel_weight_diff"] < 1e-4
    assert m["max_abs_test_acc_diff"] <= 1 / tr["test_examples"] + 1e-12


def test_dry_run_similarity_and_pace(dry):
    sim = dry[1]["sections"]["similarity"]
    assert set(sim["measures"]) == {"svcca", "pwcca", "cka"}
    assert sim["max_abs_diff"] <= 1e-12 and sim["within_1e-6"]  # CPU against CPU here
    assert all(m["finite"] and 0 < m["mean_offdiag"] <= 1 for m in sim["measures"].values())
    pace = dry[1]["sections"]["pace"]
    [group] = pace["groups"]
    from rmpm.analysis.populations import profile_recipes
    assert pace["profile"] == "paper" and \
        pace["plan"]["fashion_mnist"]["recipes"] == len(profile_recipes("paper", ["fashion_mnist"]))
    assert group["members"] == 2 and group["model_epochs"] == 2 and group["seconds"] > 0
    est = pace["dataset_estimate"]
    assert est["groups"] > est["groups_measured"] == 1
    assert est["total_minutes"] * 60 > est["measured_seconds"]  # the rest was extrapolated
    assert pace["resnet_probe"]["seconds_per_step"] > 0
    rows = pace["profile_estimate"]["datasets"]
    assert set(rows) == {"mnist", "fashion_mnist", "cifar10", "svhn"}
    assert all(r["hours"] > 0 for r in rows.values()) and pace["profile_estimate"]["complete"]
    assert "ResNet probe" in rows["cifar10"]["how"] and "same architecture" in rows["mnist"]["how"]


def test_dry_run_digests_are_pinned(dry):
    got = dry[1]["sections"]["digests"]["computed"]
    # the worker ran in its own interpreter with the pinned environment
    assert got["env"]["ATEN_CPU_CAPABILITY"] == "avx2" and got["env"]["MKL_CBWR"] == "AVX2"
    assert got["cpu_capability"] == "AVX2" and got["threads"] == 1
    assert set(got["variants"]) == set(gc.VARIANTS)
    for rows in got["variants"].values():
        assert list(rows) == list(gc.digest_recipes(small=True))
        assert all(HEX64.match(r["sha256"]) for r in rows.values())


def test_committed_reference_covers_the_digest_recipes():
    refs = json.loads(gc.REFERENCE.read_text())["references"]
    assert refs  # one entry per torch version it was computed with
    for torch_version, ref in refs.items():
        assert ref["torch"] == torch_version and set(ref["variants"]) == set(gc.VARIANTS)
        for rows in ref["variants"].values():
            assert list(rows) == list(gc.digest_recipes())
            assert all(HEX64.match(r["sha256"]) for r in rows.values())
        assert ref["cpu_capability"] == "AVX2" and ref["threads"] == 1
        assert HEX64.match(ref["code_fingerprint"])


def test_compare_digests():
    def got(sha, key="k1", torch="2.a"):
        return {"torch": torch, "variants": {"avx2": {"a": {"recipe_key": key, "sha256": sha}}}}

    refs = {"references": {"2.a": {**got("0" * 64), "code_fingerprint": "f"},
                           "2.b": {**got("1" * 64, torch="2.b"), "code_fingerprint": "f"}}}
    same = gc.compare_digests(got("0" * 64), refs, "f")
    assert same["all_match"] is True and same["same_torch_reference"]
    assert same["all_match_any_torch"] == {"2.a": True, "2.b": False}
    one = same["by_reference_torch"]["2.a"]
    assert one["reference_fresh"] and one["same_torch"] and one["variants"]["avx2"]["a"] == "match"
    assert same["by_reference_torch"]["2.b"]["variants"]["avx2"]["a"] == "DIFFERENT"
    stale = gc.compare_digests(got("1" * 64), refs, "g")
    assert stale["all_match"] is False and not stale["by_reference_torch"]["2.a"]["reference_fresh"]
    changed = gc.compare_digests(got("0" * 64, key="k2"), refs, "f")
    assert changed["all_match"] is False
    assert changed["by_reference_torch"]["2.a"]["variants"]["avx2"]["a"] == "recipe changed"
    other = gc.compare_digests(got("1" * 64, torch="2.c"), refs, "f")  # no same-torch reference
    assert other["all_match"] is None and other["all_match_any_torch"] == {"2.a": False, "2.b": True}
    assert gc.compare_digests(got("0" * 64), None, "f") == {"reference": "none", "all_match": None}


def test_state_digest_sees_every_bit():
    import torch
    a = {"w": torch.zeros(3), "n": torch.tensor(2)}
    b = {"w": torch.zeros(3), "n": torch.tensor(2)}
    assert gc.state_digest(a) == gc.state_digest(b)
    b["w"][1] = torch.finfo(torch.float32).tiny  # the smallest change still changes the digest
    assert gc.state_digest(a) != gc.state_digest(b)
    assert gc.state_digest({"w": torch.zeros(3, 1), "n": a["n"]}) != gc.state_digest(a)


def test_a_section_in_its_own_process(tmp_path):
    report = gc.main(["--dry-run", "--device", "cpu", "--sections", "similarity",
                      "--out", str(tmp_path)])
    assert report["isolation"] == "one subprocess per section"
    assert list(report["sections"]) == ["similarity"]
    assert report["sections"]["similarity"]["status"] == "ok"


def test_bad_arguments_are_refused(tmp_path):
    with pytest.raises(SystemExit, match="unknown.*'colour'.*allowed: train,similarity"):
        gc.main(["--dry-run", "--sections", "train,colour", "--out", str(tmp_path)])
    with pytest.raises(SystemExit):
        gc.main(["--dry-run", "--budget", "0", "--out", str(tmp_path)])
    assert not (tmp_path / "gpu_check.json").exists()  # refused before any work


def test_the_prepared_device_call_is_valid():
    """GPU_CHECK.md's command fits the device tool (2,000 characters), passes arguments the
    script accepts, leaves the script time to finish, and carries a folder git ignores."""
    import shlex

    doc = (ROOT / "benchmarks" / "GPU_CHECK.md").read_text()
    call = doc[doc.index("## The call"):]
    [command] = re.findall(r"```bash\n(.*?)\n```", call, flags=re.S)[:1]
    assert len(command) <= 2000 and "\n" not in command
    args = command.split("python3 benchmarks/gpu_check.py", 1)[1].split("2>&1")[0]
    parsed = gc.parser().parse_args(shlex.split(args.replace('"$OUT"', "OUT")))
    assert parsed.out == "OUT" and not parsed.dry_run
    timeout = int(re.search(r"`timeout_s`: `(\d+)`", call).group(1))
    assert parsed.budget + 60 <= timeout <= 600
    assert "`carry`: `[\".gpucheck\"]`" in call and "RMPM_FASHION_MNIST_DIR=$PWD/.gpucheck/" in command
    assert "/.gpucheck/" in (ROOT / ".gitignore").read_text().splitlines()  # never committed
