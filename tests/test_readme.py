"""The README's examples, as written: every Python block runs in order in one namespace (the
first defines the names the others use), except those marked as needing GPUs or a cloud
bucket, which are compiled and their imports resolved; every `trainyard` command line parses
with the real command line and its config, overrides and search space load."""

import ast
import re
import shlex
from pathlib import Path

import pytest

from tests.conftest import ROOT

README = (ROOT / "README.md").read_text()
_BLOCK = re.compile(r"(?:<!-- needs: (?P<needs>[^>]*?) -->\n)?```(?P<lang>\w*)\n(?P<code>.*?)```", re.S)


def blocks(lang: str) -> list[tuple[str, str | None]]:
    """(code, what it needs or None) of each block in `lang`, in the README's order."""
    return [(m["code"], m["needs"]) for m in _BLOCK.finditer(README) if m["lang"] == lang]


def command_lines() -> list[str]:
    lines = []
    for code, _ in blocks("bash"):
        for line in code.replace("\\\n", " ").splitlines():
            if line.strip().startswith("trainyard "):
                lines.append(line.strip())
    return lines


def test_the_readme_has_the_examples_this_file_runs():
    assert len(blocks("python")) >= 7 and len(command_lines()) >= 15
    assert [needs for _, needs in blocks("python") if needs]  # some are marked, each saying what it needs


@pytest.mark.slow
def test_every_python_example_runs_as_written(ray_session, queue_cluster, tmp_path, monkeypatch):
    """(The job queue's example runs its job on the session's `ray start` head, which
    queue_cluster names in RAY_ADDRESS: with none, the queue would start a head of its own.)"""
    monkeypatch.chdir(tmp_path)  # what the examples write (checkpoints, the job database) goes here
    namespace = {"__name__": "readme"}
    for code, needs in blocks("python"):
        if needs:  # GPUs or a bucket this machine has not: its imports must resolve, its code compile
            tree = ast.parse(code)
            imports = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
            exec(compile(ast.Module(imports, []), "README.md", "exec"), dict(namespace))
            continue
        try:
            exec(compile(code, "README.md", "exec"), namespace)
        except Exception as e:  # noqa: BLE001 - name the example that failed
            raise AssertionError(f"this README example failed ({type(e).__name__}: {e}):\n{code}") from e
    assert namespace["results"]["final_loss"] < 10 and namespace["queue"].get_job_status(namespace["job_id"]) == "completed"


@pytest.mark.parametrize("line", command_lines())
def test_every_command_line_in_the_readme_parses_and_its_inputs_load(line, monkeypatch):
    from trainyard.cli.main import parse
    from trainyard.experiment import load_spec
    from trainyard.hpo import load_search_space

    monkeypatch.chdir(ROOT)
    argv = shlex.split(line, comments=True)[1:]
    try:
        args = parse(argv)
    except SystemExit as e:
        raise AssertionError(f"`{line}` does not parse (exit {e.code})") from None
    config = getattr(args, "config", None)
    if config and not re.search(r"<|\.\.\.", config):  # placeholders (`...`, `<run>`) stay as they are
        load_spec(config, getattr(args, "overrides", ()))
        assert Path(config).is_file()
    if getattr(args, "space", None):
        load_search_space(args.space)
