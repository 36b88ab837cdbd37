"""`python -m moe_lab.inspect` end to end on tiny saved models of each kind it reads."""

import subprocess
import sys

import pytest
import torch
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from moe_lab.inspect import main, route_tokens
from moe_lab.interop.checkpoint import save_pretrained
from moe_lab.model import MoETransformer, count_model
from tests.helpers import byte_model, tiny_config

TEXT = "To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer. " * 4


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "text.txt"
    path.write_text(TEXT)
    return path


def run(capsys, *argv) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_moe_lab_directory_prints_tables_and_writes_heatmap(tmp_path, text_file, capsys):
    model = byte_model()
    save_pretrained(tmp_path / "model", model.cfg, model.state_dict())
    code, out, err = run(
        capsys, tmp_path / "model", "--text", text_file, "--max-tokens", 100, "--logdir", tmp_path / "logs"
    )
    assert code == 0, err
    counts = count_model(model.cfg)
    assert f"{counts.total_params:,}" in out and "MoE layers 0, 2 of 3" in out
    assert "routing over 100 tokens" in out and "expert load" in out
    # Each token makes top_k assignments in every MoE layer: a count the config fixes, not the model.
    rows = [line.split() for line in out.splitlines() if line.split()[:2] in (["0", "200"], ["2", "200"])]
    assert len(rows) == 2
    events = EventAccumulator(str(tmp_path / "logs"))
    events.Reload()
    assert "routing/expert_load" in events.Tags()["images"]


def test_routed_counts_equal_the_routers_own_choices():
    model = byte_model()
    ids = list(TEXT.encode())[:90]
    choices = {}
    for i in model.moe_layers:
        model.blocks[i].ffn.router.register_forward_hook(
            lambda mod, args, out, i=i: choices.setdefault(i, []).append(out.expert_idx)
        )
    summary = route_tokens(model, ids, context=32)  # three windows: 32 + 32 + 26
    for row, layer in enumerate(summary.layers):
        expected = torch.bincount(torch.cat(choices[layer]), minlength=6).double()
        assert torch.equal(torch.from_numpy(summary.counts[row]), expected)
    assert summary.n_tokens == 90


def word_tokenizer(text: str):
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = sorted(set(text.split()))
    tokenizer = Tokenizer(models.WordLevel({w: i + 1 for i, w in enumerate(words)} | {"[UNK]": 0}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return tokenizer


@pytest.mark.parametrize("with_tokenizer", [False, True])
def test_trainer_checkpoint(with_tokenizer, tmp_path, text_file, capsys):
    from moe_lab.data.tokenizers import HFTokenizer

    model = byte_model()
    run_dir = tmp_path / "run"  # the trainer's layout: RUN/checkpoints/last.ckpt, RUN/tokenizer/
    (run_dir / "checkpoints").mkdir(parents=True)
    torch.save(
        {
            "state_dict": {"model." + k: v for k, v in model.state_dict().items()},
            "hyper_parameters": {"config": {"model": OmegaConf.to_container(OmegaConf.structured(model.cfg))}},
        },
        run_dir / "checkpoints" / "last.ckpt",
    )
    if with_tokenizer:
        HFTokenizer(word_tokenizer(TEXT), "bpe").save(run_dir / "tokenizer")
    code, out, err = run(capsys, run_dir / "checkpoints" / "last.ckpt", "--text", text_file)
    assert code == 0, err
    n_tokens = len(TEXT.split()) if with_tokenizer else len(TEXT.encode())
    assert "trainer checkpoint" in out and f"routing over {n_tokens:,} tokens" in out
    assert f"tokenizer  {'bpe' if with_tokenizer else 'byte'}" in out


def test_hugging_face_directory_uses_its_own_tokenizer(tmp_path, text_file, capsys):
    transformers = pytest.importorskip("transformers")
    hf = transformers.MixtralForCausalLM(
        transformers.MixtralConfig(
            vocab_size=64,
            hidden_size=32,
            intermediate_size=48,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            num_local_experts=4,
            num_experts_per_tok=2,
            max_position_embeddings=4096,
        )
    )
    hf.save_pretrained(tmp_path / "hf")
    code, out, err = run(capsys, tmp_path / "hf", "--text", text_file)
    assert code == 2 and err.startswith("error: ") and "tokenizer.json: not found" in err
    word_tokenizer(TEXT).save(str(tmp_path / "hf" / "tokenizer.json"))
    code, out, err = run(capsys, tmp_path / "hf", "--text", text_file, "--logdir", tmp_path / "logs")
    assert code == 0, err
    n_words = len(TEXT.split())
    assert "Hugging Face checkpoint" in out and f"routing over {n_words} tokens" in out
    assert list((tmp_path / "logs").glob("events.out.tfevents*"))
    # The converted directory keeps the tokenizer and routes the text the same way.
    from moe_lab.interop.hf import convert_hf_dir

    convert_hf_dir(tmp_path / "hf", tmp_path / "converted")
    code, converted_out, err = run(capsys, tmp_path / "converted", "--text", text_file)
    assert code == 0, err
    routing_table = lambda text: text.split("routing over")[1].split("wrote")[0].strip()  # noqa: E731
    assert routing_table(converted_out) == routing_table(out)


def test_token_ids_beyond_the_vocabulary_are_an_error(tmp_path, text_file, capsys):
    model = MoETransformer(tiny_config(vocab_size=64))  # byte text needs 256 ids
    save_pretrained(tmp_path / "model", model.cfg, model.state_dict())
    code, out, err = run(capsys, tmp_path / "model", "--text", text_file)
    assert code == 2 and "model.vocab_size=64" in err and err.count("\n") == 1


def test_missing_checkpoint_is_one_error_line(tmp_path, text_file):
    result = subprocess.run(
        [sys.executable, "-m", "moe_lab.inspect", str(tmp_path / "missing"), "--text", str(text_file)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr == f"error: {tmp_path / 'missing'}: not found\n"
