"""The shipped example profile and the generated profile reference stay true to the schema."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any, get_args

import yaml
from typer.testing import CliRunner

from pipeline import cli
from pipeline.sweep import reference
from pipeline.sweep.spec import load_spec

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "profiles" / "example.yaml"
_KEY = re.compile(r"^(?P<indent>\s*)(?P<item>- )?(?P<key>\w+):(?P<rest>.*)$")


def annotated_keys(text: str) -> dict[str, str | None]:
    """Key path -> the text after "# default:" on its line (None without one), from indentation."""
    stack: list[tuple[int, str]] = []  # (indent of the key, its path)
    out: dict[str, str | None] = {}
    for line in text.splitlines():
        match = _KEY.match(line)
        if not match or line.lstrip().startswith("#"):
            continue
        indent = len(match["indent"]) + (2 if match["item"] else 0)
        while stack and stack[-1][0] >= (indent - 1 if match["item"] else indent):
            stack.pop()
        if match["item"]:  # a new list item: its keys sit under "<list>[]"
            stack.append((indent - 1, (stack[-1][1] if stack else "") + "[]"))
        parent = stack[-1][1] if stack else ""
        path = f"{parent}.{match['key']}".lstrip(".")
        stack.append((indent, path))
        comment = match["rest"].partition("#")[2]
        out[path] = comment.partition("default:")[2] if "default:" in comment else None
    return out


def _parsed(text: str) -> Any:
    """The value a "# default:" comment states: up to its first ";" or "(" as YAML."""
    return yaml.safe_load(re.split(r"[;(]", text)[0].strip())


def test_example_profile_loads_and_names_every_key_with_its_true_default():
    spec = load_spec(EXAMPLE)
    assert spec.name == "example"
    schema = reference.keys()
    annotated = annotated_keys(EXAMPLE.read_text())
    assert set(schema) - set(annotated) == set(), "keys of the schema missing from profiles/example.yaml"
    assert set(annotated) - set(schema) == set()
    for path, (required, default) in schema.items():
        if required or isinstance(default, dict) or path.startswith(("methods.ipcv.", "methods.llm.")):
            continue  # a section's default is its keys'; a grid key's is its config's, stated for its section
        assert annotated[path] is not None, f"{path}: no '# default:' comment in profiles/example.yaml"
        assert _parsed(annotated[path]) == default, (path, annotated[path], default)


def test_annotated_keys_follow_indentation_and_list_items():
    text = ("a: 1  # default: 2\nb:\n  - c: x\n    d: 3\n  - c: z  # default: [y]\n    g:\n      h: 1\n"
            "e:\n  f: null  # default: null (none)\n")
    keys = annotated_keys(text)
    assert keys == {"a": " 2", "b": None, "b[].c": " [y]", "b[].d": None, "b[].g": None, "b[].g.h": None, "e": None,
                    "e.f": " null (none)"}
    assert _parsed(keys["b[].c"]) == ["y"] and _parsed(keys["e.f"]) is None


def test_profile_reference_is_up_to_date():
    committed = (ROOT / "docs" / "profile.md").read_text()
    assert committed == reference.render(), "docs/profile.md is stale: ipcv-study profile-reference --out docs/profile.md"
    for path in ("models[].dtype", "methods.ipcv.budget", "evaluation.tasks[].task", "cluster.wait_s"):
        section, _, key = path.rpartition(".")
        assert f"## `{section}`" in committed and f"| `{key}` |" in committed
    assert "| `dtype` | one of: `float32`, `bfloat16`, `float16` | `\"bfloat16\"` |" in committed
    result = CliRunner().invoke(cli.app, ["profile-reference"])
    assert result.exit_code == 0 and result.output == committed


def test_enumerated_options_list_their_choices():
    from pipeline.gate import COSTS
    from pipeline.models import DTYPES, attention
    from pipeline.sweep.driver import EXECUTORS

    assert get_args(cli.Dtype) == tuple(DTYPES) and get_args(cli.Executor) == EXECUTORS
    assert get_args(cli.Attention) == attention.IMPLEMENTATIONS
    assert [c.value for c in cli.Cost] == list(cli.columns.COSTS)
    result = CliRunner().invoke(cli.app, ["check", "--help"], env={"COLUMNS": "200"})
    assert "instructions|time" in result.output and set(COSTS) == {"instructions", "time"}
    result = CliRunner().invoke(cli.app, ["profile", "--help"], env={"COLUMNS": "200"})
    for choices in ("global|per_image", "float32|bfloat16|float16", "eager|sdpa|flash_attention_2|torch_flash_varlen", "none|dart|fastv"):
        assert choices in result.output, choices
    result = CliRunner().invoke(cli.app, ["demo", "--dtype", "float8"])
    assert result.exit_code == 2 and "float8" in result.output


def test_node_ip_address_is_one_name_with_the_old_one_kept():
    for flag in ("--node-ip-address", "--node-ip"):
        result = CliRunner().invoke(cli.app, ["run", str(EXAMPLE), "--dry-run", flag, "127.0.0.1"])
        assert result.exit_code == 0, result.output
    helptext = subprocess.run([sys.executable, str(ROOT / "scripts" / "launch_sweep.py"), "--help"], capture_output=True,
                              text=True, check=True).stdout
    assert "--node-ip-address NODE_IP_ADDRESS, --node-ip NODE_IP_ADDRESS" in helptext
