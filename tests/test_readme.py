"""The README's code for users' own models runs as written (guards against API drift)."""
import re
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_block(containing: str) -> str:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    [block] = [b for b in blocks if containing in b]
    return block


def _mlp(seed):
    g = torch.Generator().manual_seed(seed)
    net = torch.nn.Sequential(OrderedDict(
        flatten=torch.nn.Flatten(), layer1=torch.nn.Linear(64, 32), relu=torch.nn.ReLU(),
        layer3=torch.nn.Linear(32, 16), relu3=torch.nn.ReLU(), head=torch.nn.Linear(16, 10)))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return net


def test_readme_own_models_snippet_runs(tmp_path, monkeypatch):
    code = _python_block("multiplicity_report")
    g = torch.Generator().manual_seed(0)
    ns = {"my_models": [_mlp(s) for s in range(3)],
          "x": torch.rand((300, 1, 8, 8), generator=g),
          "y": torch.randint(0, 10, (300,), generator=g)}
    monkeypatch.chdir(tmp_path)  # the snippet writes my-report/
    exec(compile(code, str(README), "exec"), ns)
    assert ns["sim"].shape == (3, 3) and np.allclose(np.diag(ns["sim"]), 1.0)
    assert 0.0 < ns["rm"] < 1.0  # different random models: some, not total, dissimilarity
    assert abs(ns["one_pair"] - ns["sim"][0, 1]) < 1e-9  # the object API agrees with all-pairs
    assert ns["pm_ci"].low <= ns["pm_ci"].estimate <= ns["pm_ci"].high
    assert ns["probs"].shape == (3, 300, 10)
    assert ns["pm"]["n_models"] == 3 and ns["pm"]["prediction_variance"] > 0
    assert (tmp_path / "my-report" / "manifest.json").is_file()
    assert (tmp_path / "my-report" / "report.md").is_file()


def test_readme_verify_commands_are_what_ci_runs():
    """The README's `rmpm verify` commands are run as written, on a fresh default
    build, by .ci/run; the committed manifest they name exists and is the default
    profile's."""
    import json
    bash = "\n".join(re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S))
    commands = [l.split("#")[0].strip() for l in bash.splitlines() if " rmpm verify " in l]
    assert len(commands) == 2
    ci = (README.parent / ".ci" / "run").read_text().splitlines()
    for c in commands:
        assert c in ci, f"{c!r} is not run by .ci/run"
    committed = README.parent / "manifests" / "default.json"
    assert any(str(committed.relative_to(README.parent)) in c for c in commands)
    m = json.loads(committed.read_text())
    assert m["environment"]["profile"] == "default"
    assert m["models"] and m["evals"] and m["results"]
