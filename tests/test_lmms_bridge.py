"""The lmms-eval bridge (pipeline/lmms/): the IPCV models run by lmms-eval's own command line and by a
sweep, on local lmms-eval tasks (lmms-eval's task definitions over the synthetic benchmark), offline;
and the study's scorers against lmms-eval's on the same answers. Skipped without the lmms extra."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("lmms_eval", reason="lmms-eval is not installed (pip install -e '.[lmms]')")

import pandas as pd  # noqa: E402
from lmms_eval.api.model import lmms  # noqa: E402
from PIL import Image  # noqa: E402

import ipcv  # noqa: E402
from pipeline.evaluation import scoring  # noqa: E402
from pipeline.lmms.args import method_configs  # noqa: E402
from pipeline.lmms.backend import evaluate_task, task_manager  # noqa: E402
from pipeline.lmms.local_tasks import write_local_tasks  # noqa: E402
from pipeline.sweep.driver import run_sweep  # noqa: E402
from pipeline.sweep.spec import ProfileError, parse_spec  # noqa: E402

SAMPLES = 6
PUBLISHED = "prune_layer=3,reduction_ratio=0.65,as_layers=7,neighbors=10,llm_method=dart,llm_layer=2,llm_ratio=0.778"


@pytest.fixture(scope="module")
def local_tasks(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("lmms_tasks")
    write_local_tasks(folder, samples=SAMPLES, seed=3)
    return folder


def test_model_args_make_the_method_configs():
    vision, llm, rest = method_configs(dict(arg.split("=") for arg in PUBLISHED.split(",")) | {"resolution": "224"})
    assert vision == ipcv.IPCVConfig(prune_layer=3, reduction_ratio=0.65, as_layers=7, neighbors=10)
    assert llm == ipcv.LLMPruneConfig(method="dart", layer=2, reduction_ratio=0.778)
    assert rest == {"resolution": "224"}
    assert method_configs({}) == (ipcv.IPCVConfig(), None, {})  # named for IPCV: on, as published
    assert method_configs({"ipcv": "false", "llm_method": "fastv"})[:2] == (None, ipcv.LLMPruneConfig(method="fastv"))
    with pytest.raises(ValueError, match="without llm_method"):
        method_configs({"llm_layer": 2})
    with pytest.raises(ValueError, match="prune_layer must be a int"):
        method_configs({"prune_layer": "3.5"})
    with pytest.raises(ValueError, match="reduction_ratio"):
        method_configs({"reduction_ratio": 1.5})


def test_entry_point_registers_the_models_with_lmms_eval():
    from lmms_eval.models import get_model, list_available_models

    assert {"ipcv_qwen2_vl", "ipcv_qwen2_5_vl", "ipcv_internvl3"} <= set(list_available_models())
    cls = get_model("ipcv_qwen2_5_vl")
    assert issubclass(cls, lmms) and cls.is_simple
    with pytest.raises(TypeError, match="unknown model_args colour"):
        cls.create_from_arg_string("pretrained=tiny-qwen2.5-vl,colour=red", {"device": "cpu"})
    with pytest.raises(ValueError, match="serves qwen2_5_vl"):
        cls.create_from_arg_string("pretrained=tiny-qwen2-vl", {"device": "cpu"})


def test_lmms_model_is_the_patched_study_model():
    from lmms_eval.models import get_model

    lm = get_model("ipcv_qwen2_vl").create_from_arg_string(f"pretrained=tiny-qwen2-vl,{PUBLISHED},resolution=224",
                                                           {"batch_size": 1, "device": "cpu"})
    assert lm.handle.vision_config.reduction_ratio == 0.65 and lm.handle.llm_config.method == "dart"
    image = Image.new("RGB", (300, 200), (200, 30, 30))
    lm.respond("What colour is the shape?", [image], {"max_new_tokens": 4})
    stats = lm.handle.vision_stats
    assert stats is not None and sum(stats.tokens_kept) < sum(stats.tokens_in)  # IPCV ran in that tower call
    spec = lm.request("q", [image])
    assert all(side % 28 == 0 for side in spec.images[0].size)  # sent as the study's own tasks send images


def test_internvl3_model_and_video_requests(tmp_path):
    from lmms_eval.models import get_model

    from pipeline.evaluation.synthetic import write_synthetic

    internvl = get_model("ipcv_internvl3").create_from_arg_string("pretrained=tiny-internvl3,reduction_ratio=0.5",
                                                                  {"device": "cpu"})
    internvl.respond("What colour?", [Image.new("RGB", (500, 400), (10, 200, 10))], {"max_new_tokens": 2})
    stats = internvl.handle.vision_stats
    assert stats.tokens_kept and all(k < n for k, n in zip(stats.tokens_kept, stats.tokens_in))  # every tile pruned
    clip = json.loads(write_synthetic("mvbench", tmp_path, 1).read_text())[0]["video"]  # a folder of frames
    qwen = get_model("ipcv_qwen2_vl").create_from_arg_string("pretrained=tiny-qwen2-vl,resolution=112,frames=4",
                                                             {"device": "cpu"})
    assert qwen.request("Which way?", [str(tmp_path / clip)]).describe() == "video 4 frames 112x112"
    qwen.respond("Which way?", [str(tmp_path / clip)], {"max_new_tokens": 2})
    assert qwen.handle.vision_stats.frames_per_item == [2]  # 4 frames, 2 temporal patches, went through IPCV
    with pytest.raises(ValueError, match="that one video alone"):
        qwen.request("q", [str(tmp_path / clip), Image.new("RGB", (56, 56))])


def _cli(args: list[str], cwd: Path, env_home: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "disabled",
           "HF_HOME": str(env_home)}
    lmms_eval = Path(sys.executable).with_name("lmms-eval")
    return subprocess.run([str(lmms_eval), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_lmms_eval_command_runs_an_ipcv_model_on_local_tasks_offline(local_tasks, tmp_path):
    out = tmp_path / "out"
    done = _cli(["--model", "ipcv_qwen2_vl", "--model_args", f"pretrained=tiny-qwen2-vl,{PUBLISHED},resolution=224",
                 "--tasks", "ipcv_synthetic_pope,ipcv_synthetic_mmbench,ipcv_synthetic_textvqa",
                 "--include_path", str(local_tasks), "--batch_size", "1", "--device", "cpu",
                 "--gen_kwargs", "max_new_tokens=4", "--output_path", str(out), "--log_samples"],
                tmp_path, tmp_path / "hf")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads(next(p for p in out.rglob("*_results.json") if "submissions" not in p.parts).read_text())
    assert results["config"]["model_backend"] == "pipeline.lmms.model.IPCVQwen2VL (simple)"
    pope = results["results"]["ipcv_synthetic_pope"]
    assert 0 <= pope["pope_accuracy,none"] <= 1 and 0 <= pope["pope_yes_ratio,none"] <= 1
    assert "gpt_eval_score,none" in results["results"]["ipcv_synthetic_mmbench"]
    assert "exact_match,none" in results["results"]["ipcv_synthetic_textvqa"]
    for task in ("pope", "mmbench", "textvqa"):
        logged = [json.loads(line) for line in next(out.rglob(f"*_samples_ipcv_synthetic_{task}.jsonl")).open()]
        assert len(logged) == SAMPLES and all(isinstance(s["filtered_resps"], (str, list)) for s in logged)


class Scripted(lmms):
    """Answers each document with a given text: lmms-eval's scoring of known answers."""

    def __init__(self, answers: list[str]) -> None:
        super().__init__()
        self.answers = answers

    def generate_until(self, requests):
        return [self.answers[r.args[3] % len(self.answers)] for r in requests]

    def loglikelihood(self, requests):
        raise NotImplementedError

    def generate_until_multi_round(self, requests):
        raise NotImplementedError


def _lmms_scores(task: str, local_tasks: Path, answers: list[str], tmp_path: Path) -> tuple[dict, list[dict]]:
    from types import SimpleNamespace

    from lmms_eval.evaluator import simple_evaluate

    results = simple_evaluate(model=Scripted(answers), tasks=[task], task_manager=task_manager(str(local_tasks)),
                              log_samples=True, bootstrap_iters=0, process_docs_parallel=1,
                              cli_args=SimpleNamespace(output_path=str(tmp_path), process_with_media=False))
    return results["results"][task], sorted(results["samples"][task], key=lambda s: s["doc_id"])


def _docs(local_tasks: Path, task: str) -> list[dict]:
    return pd.read_parquet(local_tasks / f"ipcv_synthetic_{task}.parquet").drop(columns="image").to_dict("records")


def test_textvqa_scores_agree_with_lmms_eval(local_tasks, tmp_path):
    """The same rule on both sides (EvalAI normalisation, VQA accuracy): equal on every answer."""
    docs = _docs(local_tasks, "textvqa")
    word = docs[0]["answers"][0]
    answers = [word, word.upper() + ".", f"The {word}", f"'{word}'", "two", "a b c"][:SAMPLES]
    metrics, samples = _lmms_scores("ipcv_synthetic_textvqa", local_tasks, answers, tmp_path)
    ours = [scoring.vqa_accuracy(answers[i], list(doc["answers"])) for i, doc in enumerate(docs)]
    assert [s["exact_match"] for s in samples] == pytest.approx(ours)
    assert metrics["exact_match,none"] == pytest.approx(sum(ours) / len(ours))
    assert 0 < sum(ours) < len(ours)  # the answers include right and wrong ones


def test_option_letter_scores_agree_with_lmms_eval_where_the_rules_agree(local_tasks, tmp_path):
    """MMBench: exact option letters ("B", "B.", "(B)") score alike on both sides; both read an
    answer naming exactly one option's text. Answers outside that (a lower-case letter, "A cat")
    differ, as docs/accuracy.md says."""
    docs = _docs(local_tasks, "mmbench")
    letters = "ABCD"
    forms = ["{}", "{}.", "({})", "{}", "{}.", "({})"]
    answers = []
    for i, doc in enumerate(docs):  # right letters for even rows, a wrong one for odd rows
        letter = doc["answer"] if i % 2 == 0 else letters[(letters.index(doc["answer"]) + 1) % 4]
        answers.append(forms[i % len(forms)].format(letter))
    metrics, _ = _lmms_scores("ipcv_synthetic_mmbench", local_tasks, answers, tmp_path)
    ours = [scoring.multiple_choice_score(a, [d[c] for c in letters], d["answer"]) for a, d in zip(answers, docs)]
    assert metrics["gpt_eval_score,none"] == pytest.approx(100 * sum(ours) / len(ours))  # percent
    assert sum(ours) == (len(docs) + 1) // 2

    from lmms_eval.tasks.mmbench.en_utils import mmbench_evaluator

    doc = docs[0]
    choices = {c: doc[c] for c in letters}
    for answer in ("B", "B.", "(B)", "The answer is B.", doc["A"]):
        expected = mmbench_evaluator.can_infer(answer, dict(choices)) or None
        assert scoring.choice_letter(answer, list(choices.values())) == expected, answer
    for answer in ("Answer: B", "B) x", "b", f"{doc['A']} or {doc['B']}"):
        assert scoring.choice_letter(answer, list(choices.values())) == (mmbench_evaluator.can_infer(answer, dict(choices))
                                                                         or None), answer
    # where they part (docs/accuracy.md): a lone letter among other words
    assert mmbench_evaluator.can_infer("I think B", dict(choices)) == "B"
    assert scoring.choice_letter("I think B", list(choices.values())) is None


def test_pope_scores_agree_on_plain_yes_no_and_differ_beyond(local_tasks, tmp_path):
    docs = _docs(local_tasks, "pope")
    plain = ["yes", "no", "Yes", "No", " yes ", "no"][:SAMPLES]
    metrics, samples = _lmms_scores("ipcv_synthetic_pope", local_tasks, plain, tmp_path)
    ours = scoring.yes_no_metrics([scoring.yes_no(a) for a in plain], [d["answer"] for d in docs])
    for name in ("accuracy", "precision", "recall"):
        assert metrics[f"pope_{name},none"] == pytest.approx(ours[name]), name
    # beyond one plain word the rules part: lmms-eval matches the whole answer, ours reads the first sentence
    _, samples = _lmms_scores("ipcv_synthetic_pope", local_tasks, ["Yes, there is.", "No, there is not."], tmp_path)
    assert [s["pope_accuracy"]["score"] for s in samples[:2]] == [0.0, 0.0]
    assert [scoring.yes_no(a) for a in ("Yes, there is.", "No, there is not.")] == ["yes", "no"]


def test_backend_gives_row_columns_and_answers_of_the_patched_model(local_tasks):
    from pipeline.models import build_tiny, family_of

    model = build_tiny("tiny-qwen2-vl")
    builder = family_of(model).request_builder(model)
    task = {"task": "ipcv_synthetic_pope", "backend": "lmms-eval", "include_path": str(local_tasks), "frames": 8,
            "gen_kwargs": "max_new_tokens=3", "limit": 4}
    plain = evaluate_task(model, builder, task, 112)
    with ipcv.apply(model, vision=ipcv.IPCVConfig(reduction_ratio=0.9)):
        pruned = evaluate_task(model, builder, task, 112, reference=plain.answers)
    assert pruned.columns["lmms_ipcv_synthetic_pope_samples"] == 4
    assert pruned.columns["lmms_ipcv_synthetic_pope"] == pruned.columns["lmms_ipcv_synthetic_pope_pope_accuracy"]
    match = sum(a == b for a, b in zip(pruned.answers.texts, plain.answers.texts)) / 4
    assert pruned.columns["lmms_ipcv_synthetic_pope_answer_match"] == match
    assert [r["reference_answer"] for r in pruned.records] == plain.answers.texts
    assert [r["truth"] for r in pruned.records] == [d["answer"] for d in _docs(local_tasks, "pope")[:4]]


def test_profile_task_keys_are_checked_per_backend():
    base = {"name": "x", "models": [{"name": "tiny-qwen2-vl"}], "inputs": {"images": {"resolutions": [112]}}}
    with pytest.raises(ProfileError, match="not one of the study's tasks"):
        parse_spec({**base, "evaluation": {"tasks": [{"task": "gqa"}]}})
    with pytest.raises(ProfileError, match="settings of the study's own tasks"):
        parse_spec({**base, "evaluation": {"tasks": [{"task": "gqa", "backend": "lmms-eval", "source": "/data"}]}})
    with pytest.raises(ProfileError, match="settings of lmms-eval tasks"):
        parse_spec({**base, "evaluation": {"tasks": [{"task": "pope", "gen_kwargs": "max_new_tokens=2"}]}})
    own = parse_spec({**base, "evaluation": {"tasks": [{"task": "pope"}]}}).evaluation.tasks[0].cell_config()
    assert "backend" not in own and own["limit"] == 8  # own tasks' cells keep the ids they had


@pytest.mark.parametrize("executor", ["local", pytest.param("ray", marks=pytest.mark.ray)])
def test_sweep_scores_an_lmms_eval_task_beside_an_own_task(local_tasks, tmp_path, executor):
    data = {
        "name": "lmms-bridge", "models": [{"name": "tiny-qwen2-vl", "dtype": "float32"}],
        "inputs": {"images": {"resolutions": [112]}},
        "methods": {"baseline": True, "ipcv": {"reduction_ratio": [0.5]}},
        "measurement": {"warmup": 0, "repeats": 1, "max_new_tokens": 2, "count_flops": False},
        "tracking": {"mode": "disabled"},
        "evaluation": {"max_new_tokens": 3, "tasks": [
            {"task": "ipcv_synthetic_pope", "backend": "lmms-eval", "include_path": str(local_tasks),
             "gen_kwargs": "max_new_tokens=3"},
            {"task": "pope", "limit": 4}]},
    }
    summary = run_sweep(parse_spec(data), tmp_path / "out", progress=False, executor=executor)
    rows = pd.read_parquet(summary.results).set_index("method")
    assert list(rows.status) == ["ok", "ok"], rows.error.tolist()
    for method, row in rows.iterrows():
        assert row["lmms_ipcv_synthetic_pope_samples"] == SAMPLES
        assert row["accuracy"] == pytest.approx((row["lmms_ipcv_synthetic_pope"] + row["acc_pope"]) / 2), method
    assert rows.loc["baseline", "lmms_ipcv_synthetic_pope_answer_match"] == 1.0  # the reference is the baseline
    predictions = pd.read_parquet(next((tmp_path / "out" / "predictions").glob(f"{rows.loc['ipcv', 'cell_id']}.parquet")))
    lmms_rows = predictions[predictions.task == "lmms_ipcv_synthetic_pope"]
    assert len(lmms_rows) == SAMPLES and lmms_rows.reference_answer.notna().all()
    with pytest.raises(ValueError, match="lmms-eval has no task 'no_such_task'"):
        data["evaluation"]["tasks"][0]["task"] = "no_such_task"
        run_sweep(parse_spec(data), tmp_path / "bad", progress=False, executor=executor)
    assert not (tmp_path / "bad").exists()  # stopped before anything started
