"""Run records: written atomically, with the permissions of the run's other files."""

import json
import stat

from moe_lab.artifacts.atomic import write_json_atomic, write_text_atomic


def test_records_get_the_mode_open_gives_other_files(tmp_path):
    reference = tmp_path / "other.txt"
    reference.write_text("written with open()\n")  # what TensorBoard, checkpoints and plots get
    write_json_atomic(tmp_path / "metrics.json", {"val_loss": 1.5})
    write_text_atomic(tmp_path / "config.yaml", "name: x\n")
    want = stat.S_IMODE(reference.stat().st_mode)
    assert want & 0o044, "the test's umask hides the difference from mkstemp's 0600"
    for name in ("metrics.json", "config.yaml"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == want, name
    assert json.loads((tmp_path / "metrics.json").read_text()) == {"val_loss": 1.5}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml", "metrics.json", "other.txt"]
