"""A result file records what computed its numbers, beside them, and its content digest
covers the numbers alone."""
import json

from rmpm.book import records


def test_a_result_records_its_numerics_outside_its_digest(tmp_path, monkeypatch):
    monkeypatch.setenv("RMPM_RESULTS", str(tmp_path))
    path = records.save("01_x", "smoke", {"rm": 0.25, "seconds": 3.0})
    doc = json.loads(path.read_text())
    num = doc["numerics"]
    assert {"pinned", "numpy_simd", "blas", "libm", "env"} <= set(num)
    assert isinstance(num["pinned"], bool)  # this test process is not started pinned
    before = records.file_content_digest(path)
    doc["numerics"] = {"pinned": not num["pinned"]}  # another machine's description
    path.write_text(json.dumps(doc))
    assert records.file_content_digest(path) == before == records.content_digest({"rm": 0.25})
    assert records.content_digests(tmp_path) == {"01_x": before}
