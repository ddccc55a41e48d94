"""run_info.json: one RunInfo dataclass, written by every stage, read back unchanged."""

import json
from dataclasses import fields

from llm_unlearn.runs import RunInfo


def test_every_file_holds_every_key_and_reads_back(tmp_path):
    info = RunInfo(
        stage="unlearn",
        base_model="m",
        seed=3,
        method="toy",
        provenance={"alpha": 2.0, "strength": 0.5},  # a method's own value beside α
        exports={"unlearned": {"alpha": 2.0}},
    )
    info.write(tmp_path)
    written = json.loads((tmp_path / "run_info.json").read_text())
    stage_keys = {f.name for f in fields(RunInfo)} - {"provenance"}
    assert stage_keys <= written.keys()
    assert written["alpha"] == 2.0 and written["strength"] == 0.5
    assert written["alphas"] is None and written["eta"] is None  # always written, null when unused
    assert {"toolkit_version", "versions", "git_commit"} <= written.keys()
    assert written["which"] is None and written["summary_metrics"] is None

    back = RunInfo.read(tmp_path)
    assert back.provenance == {"alpha": 2.0, "alphas": None, "eta": None, "strength": 0.5}
    assert back.alpha == 2.0
    same_fields = {f.name for f in fields(RunInfo)} - {"provenance"}
    assert all(getattr(back, name) == getattr(info, name) for name in same_fields)
