"""Experiment config: inheritance, overrides, and one clear error per kind of mistake."""

import subprocess
import sys
from pathlib import Path

import pytest

from moe_lab.config import config_from_dict, load_config, to_dict
from moe_lab.config.experiment import flatten
from moe_lab.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def arm(tmp_path):
    (tmp_path / "base.yaml").write_text("name: base\nmodel:\n  d_model: 64\n  moe:\n    n_experts: 4\n")
    (tmp_path / "arm.yaml").write_text("extends: base.yaml\nname: arm\nmodel:\n  moe:\n    top_k: 1\n")
    return tmp_path / "arm.yaml"


def test_extends_merges_base_then_file_then_overrides(arm):
    cfg = load_config(arm, ["optim.lr=0.01", "model.moe.top_k=3"])
    assert (cfg.name, cfg.model.d_model, cfg.model.moe.n_experts) == ("arm", 64, 4)
    assert cfg.model.moe.top_k == 3 and cfg.optim.lr == 0.01
    assert cfg.model.n_layers == 4  # schema default where neither file says otherwise


def test_config_round_trips_through_dict(arm):
    cfg = load_config(arm)
    assert config_from_dict(to_dict(cfg)) == cfg
    assert flatten(to_dict(cfg))["model.moe.n_experts"] == 4


def error_of(path, overrides):
    with pytest.raises(ConfigError) as err:
        load_config(path, overrides)
    assert "\n" not in str(err.value)
    return str(err.value)


def test_unknown_key_names_it_and_the_closest_valid_key(arm):
    msg = error_of(arm, ["model.moe.topk=2"])
    assert msg.startswith("model.moe.topk:") and "did you mean model.moe.top_k" in msg


def test_unknown_key_in_yaml_file(tmp_path):
    (tmp_path / "x.yaml").write_text("optim:\n  learning_rate: 0.1\n")
    msg = error_of(tmp_path / "x.yaml", [])
    assert msg.startswith("optim.learning_rate:") and "unknown key" in msg


def test_wrong_type_names_key_expected_type_and_value(arm):
    msg = error_of(arm, ["model.moe.top_k=two"])
    assert msg == "model.moe.top_k: expected int, got 'two'"


def test_wrong_type_in_list_element(arm):
    assert error_of(arm, ["model.moe.layers=[1,x]"]) == "model.moe.layers[1]: expected int, got 'x'"


def test_value_for_a_section(arm):
    assert error_of(arm, ["model.moe=3"]).startswith("model.moe: expected a section")


def test_top_k_above_n_experts_names_both_keys(arm):
    msg = error_of(arm, ["model.moe.top_k=9"])
    assert msg.startswith("model.moe.top_k:") and "model.moe.n_experts" in msg


def test_moe_layer_index_out_of_range_names_both_keys(arm):
    msg = error_of(arm, ["model.moe.placement=list", "model.moe.layers=[0,4]"])
    assert msg.startswith("model.moe.layers:") and "model.n_layers" in msg


def test_block_size_above_max_seq_len_names_both_keys(arm):
    msg = error_of(arm, ["data.block_size=1024"])
    assert msg.startswith("data.block_size:") and "model.max_seq_len" in msg


def test_warmup_longer_than_training_names_both_keys(arm):
    msg = error_of(arm, ["optim.warmup_steps=50", "trainer.max_steps=10"])
    assert msg.startswith("optim.warmup_steps:") and "trainer.max_steps" in msg
    assert "set optim.warmup_steps=1 " in msg  # the fix, named: a tenth of the 10 steps


def test_a_short_run_of_a_long_experiment_scales_the_files_warmup():
    # The README's smoke test: shakespeare_moe.yaml says warmup 100 (of 1000 steps).
    path = REPO / "experiments" / "shakespeare_moe.yaml"
    assert load_config(path, []).optim.warmup_steps == 100
    assert load_config(path, ["trainer.max_steps=50"]).optim.warmup_steps == 5
    assert load_config(path, ["trainer.max_steps=100"]).optim.warmup_steps == 100  # fits: kept
    assert load_config(path, ["trainer.max_steps=2000"]).optim.warmup_steps == 100
    # Given on the command line, it is the user's choice: kept, and refused if it does not fit.
    assert load_config(path, ["trainer.max_steps=50", "optim.warmup_steps=20"]).optim.warmup_steps == 20
    assert error_of(path, ["trainer.max_steps=50", "optim.warmup_steps=60"]).startswith("optim.warmup_steps:")


def test_bad_enum_values_list_the_choices(arm):
    assert "bf16-mixed" in error_of(arm, ["trainer.precision=fp8"])
    assert "prune" in error_of(arm, ["monitor.collapse_action=explode"])
    assert "shakespeare" in error_of(arm, ["data.source=web"])


def test_missing_file_and_bad_yaml(tmp_path):
    assert "no such config file" in error_of(tmp_path / "nope.yaml", [])
    (tmp_path / "bad.yaml").write_text("model: [unclosed\n")
    assert error_of(tmp_path / "bad.yaml", []).startswith("config: cannot parse")
    (tmp_path / "loop.yaml").write_text("extends: loop.yaml\n")
    assert "extends itself" in error_of(tmp_path / "loop.yaml", [])


def test_malformed_override(arm):
    assert error_of(arm, ["model.moe.top_k"]).startswith("model.moe.top_k: overrides are key.sub=value")


def test_resume_from_missing_checkpoint(arm, tmp_path):
    assert error_of(arm, [f"trainer.resume={tmp_path / 'x.ckpt'}"]).startswith("trainer.resume: no such checkpoint")


def test_cli_config_error_exits_2_with_one_line_and_writes_nothing(arm, tmp_path):
    out = tmp_path / "runs"
    proc = subprocess.run(
        [sys.executable, "-m", "moe_lab.train", str(arm), "model.moe.top_k=9", f"output_dir={out}"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and proc.stderr.startswith("error: model.moe.top_k:")
    assert "Traceback" not in proc.stderr
    assert not out.exists()


def test_cli_print_config_shows_resolved_values(arm):
    proc = subprocess.run(
        [sys.executable, "-m", "moe_lab.train", str(arm), "--print-config"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "top_k: 1" in proc.stdout and "n_experts: 4" in proc.stdout
