"""A checkpoint directory as a hub download leaves it (``save_pretrained`` of the model, its
tokenizer trained here with the ``tokenizers`` library, its image processor and chat template),
loaded offline by path: ``demo``, ``profile``, ``evaluate`` and a sweep cell run from it, and
its prompts go through its own tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.models import build_tiny, family_of, load_model, load_processor, synthetic_spec
from pipeline.sweep.driver import run_sweep
from pipeline.sweep.spec import parse_spec

runner = CliRunner()
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
           "<|video_pad|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from pipeline.evaluation.synthetic import answer_vocabulary
    from pipeline.models.qwen_vl import image_processor

    folder = tmp_path_factory.mktemp("Qwen2-VL-tiny-Instruct")
    words = ["describe", "the", "picture", "in", "one", "sentence", ".", "user", "assistant", *answer_vocabulary()]
    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator([" ".join(words)], trainers.WordLevelTrainer(special_tokens=["[UNK]", *SPECIAL]))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", eos_token="<|im_end|>",
                                        pad_token="<|endoftext|>", additional_special_tokens=SPECIAL)
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(folder)
    image_processor(448).save_pretrained(folder)  # preprocessor_config.json
    model = build_tiny("tiny-qwen2-vl")
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL}
    model.config.image_token_id, model.config.video_token_id = ids["<|image_pad|>"], ids["<|video_pad|>"]
    model.config.vision_start_token_id, model.config.vision_end_token_id = ids["<|vision_start|>"], ids["<|vision_end|>"]
    assert len(tokenizer) <= model.config.get_text_config().vocab_size
    model.save_pretrained(folder)
    return folder


def test_prompts_of_a_checkpoint_go_through_its_own_tokenizer(checkpoint):
    model = load_model(str(checkpoint), dtype="float32")
    processor = load_processor(str(checkpoint))
    assert processor is not None  # its processor, or (without torchvision) its tokenizer
    tokenizer = getattr(processor, "tokenizer", processor)
    request = family_of(model).request_builder(model, processor)(synthetic_spec(112, images=1,
                                                                               prompt="describe the picture"))
    ids = request["input_ids"][0].tolist()
    assert ids.count(model.config.image_token_id) == (112 // 14) ** 2 // 4  # merged tokens of one image
    text = tokenizer.decode(ids)
    assert "describe the picture" in text and text.split()[:2] == ["<|im_start|>", "user"] and "[UNK]" not in text
    assert request["mm_token_type_ids"][0].tolist() == [int(i == model.config.image_token_id) for i in ids]


def test_a_checkpoint_without_tokenizer_is_refused_not_given_a_toy_one(tmp_path):
    build_tiny("tiny-qwen2-vl").save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="nor the tokenizer"):
        load_processor(str(tmp_path))


def test_demo_profile_and_evaluate_run_from_the_directory(checkpoint, tmp_path):
    common = ["--model", str(checkpoint), "--dtype", "float32", "--resolution", "112"]
    demo = runner.invoke(app, ["demo", *common, "--images", "1"])
    assert demo.exit_code == 0, demo.output
    profile_json = tmp_path / "profile.json"
    profile = runner.invoke(app, ["profile", *common, "--json", str(profile_json)])
    assert profile.exit_code == 0, profile.output
    report = json.loads(profile_json.read_text())
    assert report["model"] == str(checkpoint) and report["stages"]["vision"]["tokens"]["patches_in"] == (112 // 14) ** 2
    answers = tmp_path / "answers.jsonl"
    evaluate = runner.invoke(app, ["evaluate", "pope", *common, "--limit", "2", "--max-new-tokens", "2",
                                   "--out", str(answers)])
    assert evaluate.exit_code == 0, evaluate.output
    lines = [json.loads(line) for line in answers.read_text().splitlines()]
    assert sorted((r["run"], r["sample_id"]) for r in lines) == [("compressed", "0"), ("compressed", "1"),
                                                                ("uncompressed", "0"), ("uncompressed", "1")]


def test_a_sweep_cell_runs_from_the_directory(checkpoint, tmp_path):
    spec = parse_spec({
        "name": "checkpoint-dir", "output_dir": "unused", "models": [{"name": str(checkpoint), "dtype": "float32"}],
        "inputs": {"images": {"resolutions": [112]}}, "methods": {"baseline": True, "ipcv": {"reduction_ratio": [0.5]}},
        "measurement": {"warmup": 0, "repeats": 1, "max_new_tokens": 2}, "tracking": {"mode": "disabled"},
    })
    summary = run_sweep(spec, tmp_path, progress=False, executor="local")
    rows = pd.read_parquet(summary.results)
    assert summary.ok == 2 and (rows.status == "ok").all(), rows.error.tolist()
    assert (rows.weights == "checkpoint").all()


def test_a_checkpoint_loads_spread_by_the_sharding_plan(checkpoint):
    """The multi-GPU load path (config on the meta device, the plan, transformers' device-map
    load) with the CPU as the only device: the same logits as the plain load."""
    import torch

    from pipeline.models.loading import load_sharded_checkpoint
    from pipeline.models.sharding import GiB

    plain = load_model(str(checkpoint), dtype="float32")
    sharded = load_sharded_checkpoint(str(checkpoint), {"cpu": GiB}, "float32", "sdpa")
    request = family_of(plain).request_builder(plain, load_processor(str(checkpoint)))(synthetic_spec(448))
    with torch.no_grad():
        assert torch.equal(sharded(**request, logits_to_keep=1).logits, plain(**request, logits_to_keep=1).logits)
