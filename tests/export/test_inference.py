"""The export bundle as a user gets it from `trainyard train ... export_bundle=true`: its
tokenizer takes text, its requirements are pinned, inference.py answers what the model
answers, refuses bad ids in one line, and serves HTTP as the Dockerfile says."""

import ast
import json
import socket
import subprocess
import sys
import urllib.error
import urllib.request

import pytest
import torch

from tests.conftest import ROOT

pytestmark = pytest.mark.slow
TINY = ["data.train_size=256", "data.val_size=16", "model.n_layers=1", "model.d_model=32", "epochs=1", "export_bundle=true"]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    from trainyard.cli.main import main

    out = tmp_path_factory.mktemp("bundle")
    results = out / "results.json"
    assert main(["train", str(ROOT / "jobs" / "configs" / "addition.yaml"), *TINY, f"checkpoint_dir={out / 'run'}", "--results", str(results)]) == 0
    path = json.loads(results.read_text())["export_path"]
    return out / "run" / "export" if path is None else __import__("pathlib").Path(path)


def run(bundle, *args):
    return subprocess.run([sys.executable, "-I", "inference.py", *args], cwd=bundle, capture_output=True, text=True, timeout=120)


def test_onnx_is_exported_by_default_with_the_tokenizer_and_pinned_requirements(bundle):
    import numpy
    import onnxruntime

    assert (bundle / "model.onnx").exists() and (bundle / "model.torchscript.pt").exists() and (bundle / "tokenizer.json").exists()
    requirements = (bundle / "requirements.txt").read_text().splitlines()
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in requirements
    assert {f"torch=={torch.__version__.split('+')[0]}", f"numpy=={numpy.__version__}", f"onnxruntime=={onnxruntime.__version__}"} <= set(requirements)
    assert 'CMD ["python", "inference.py", "--serve", "--port", "8080"]' in (bundle / "Dockerfile").read_text()
    imports = [n for n in ast.walk(ast.parse((bundle / "inference.py").read_text())) if isinstance(n, (ast.Import, ast.ImportFrom))]
    assert not [n for n in imports if "trainyard" in ast.dump(n)]  # the bundle stands alone


def greedy(model, ids, eos, steps, max_len):
    """The model's own greedy continuation, in PyTorch: what inference.py must print."""
    ids, new = list(ids), []
    with torch.no_grad():
        for _ in range(steps):
            if len(ids) >= max_len:
                break
            token = int(model(torch.tensor([ids])).argmax(-1)[0, -1])
            ids.append(token)
            if token == eos:
                break
            new.append(token)
    return new


def test_text_in_the_models_own_answer_out(bundle):
    from trainyard.data.addition import TOKENIZER
    from trainyard.models import GPT

    config = json.loads((bundle / "model_config.json").read_text())
    model = GPT(config).eval()
    model.load_state_dict(torch.load(bundle / "model.pt", weights_only=True))
    prompt = "123+456="
    expected = greedy(model, TOKENIZER.encode(prompt, add_bos=True), TOKENIZER.eos_token_id, 32, config["max_seq_len"])
    proc = run(bundle, "--text", prompt)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["prediction"] == [expected] and out["text"] == [TOKENIZER.decode(expected)]
    assert "least-significant first: 333+500= answers 3380, which reversed is 0833" in out["how_to_read"]  # says what it means


@pytest.mark.parametrize(("args", "message"), [
    (["5", "999"], "inference.py: token id 999 is not in this model's vocabulary (integers 0 to "),
    (["--text", "12+x="], "inference.py: characters ['x'] are not in this model's tokenizer"),
    (["--text", "12+34="], "inference.py: '12+34=' is not a prompt this model was trained on: prompts are two 3-digit numbers, zero-padded"),
])
def test_bad_input_is_one_line_and_exit_code_2(bundle, args, message):
    proc = run(bundle, *args)
    assert proc.returncode == 2 and proc.stderr.startswith(message) and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_it_serves_http_as_the_dockerfile_says(bundle):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-I", "inference.py", "--serve", "--port", str(port)], cwd=bundle, stdout=subprocess.PIPE, text=True)
    try:
        assert "serving on" in server.stdout.readline()

        def post(body):
            request = urllib.request.Request(f"http://127.0.0.1:{port}/predictions", data=json.dumps(body).encode(), method="POST")
            try:
                with urllib.request.urlopen(request, timeout=30) as response:
                    return response.status, json.loads(response.read())
            except urllib.error.HTTPError as e:
                return e.code, json.loads(e.read())

        status, answer = post({"text": "123+456="})
        assert status == 200 and answer == json.loads(run(bundle, "--text", "123+456=").stdout)
        status, error = post({"input_ids": [[1, 999]]})
        assert status == 400 and "token id 999 is not in this model's vocabulary" in error["error"]
        assert post({"nothing": 1})[0] == 400
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=30) as response:
            assert json.loads(response.read()) == {"status": "ok"}
    finally:
        server.terminate()
        server.wait(timeout=30)


# inference.py under a guard: importing trainyard fails, and every module it did import must
# come from a distribution that requirements.txt names, or from one of their dependencies.
ISOLATED = """
import json, runpy, sys
sys.modules["trainyard"] = None
sys.argv = ["inference.py", *sys.argv[1:]]
try:
    runpy.run_path("inference.py", run_name="__main__")
except SystemExit as e:
    assert not e.code, e.code
from importlib.metadata import packages_distributions
owners = packages_distributions()
used = sorted({d for m, mod in list(sys.modules.items()) if mod is not None for d in owners.get(m.split(".")[0], [])})
print(json.dumps(used))
"""


def _closure(names):
    """`names` and every distribution they require, transitively (extras left out)."""
    import re
    from importlib.metadata import PackageNotFoundError, requires

    def norm(name):
        return re.sub(r"[-_.]+", "-", name).lower()

    seen, todo = set(), [norm(n) for n in names]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            needs = requires(name) or []
        except PackageNotFoundError:
            continue
        todo += [norm(re.split(r"[ ;<>=!~\[(]", r, maxsplit=1)[0]) for r in needs if "extra ==" not in r]
    return seen


def test_inference_runs_on_the_bundles_requirements_alone(bundle):
    import re

    proc = subprocess.run([sys.executable, "-I", "-c", ISOLATED, "--text", "123+456="], cwd=bundle, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    prediction, used = proc.stdout.strip().splitlines()
    assert json.loads(prediction) == json.loads(run(bundle, "--text", "123+456=").stdout)
    pinned = [re.split(r"[=<>]", line)[0] for line in (bundle / "requirements.txt").read_text().splitlines() if line and line[0].isalpha()]
    allowed = _closure(pinned)
    assert {re.sub(r"[-_.]+", "-", d).lower() for d in json.loads(used)} <= allowed, (json.loads(used), pinned)


def test_manifest_records_each_graphs_parity_with_the_model(bundle):
    from trainyard.engine.checkpoint import describe

    manifest = json.loads((bundle / "MANIFEST.json").read_text())
    assert all(describe(bundle / name) == info for name, info in manifest["files"].items())
    assert "model.pt2" in manifest["files"] and "torchserve/handler.py" in manifest["files"]
    assert set(manifest["parity"]) == {"onnx", "torchscript", "pt2"}
    for fmt, check in manifest["parity"].items():
        assert 0 <= check["max_abs_error"] <= check["tolerance"] == 1e-3, fmt
        shapes = {tuple(s) for s in check["inputs"]}
        assert len({b for b, _ in shapes}) == 2 and len({n for _, n in shapes}) == 2, shapes


def test_torchserve_handler_answers_as_inference_py_under_the_handler_contract(bundle):
    """TorchServe loads the one class in handler.py, calls initialize(context) with the
    model directory (the .mar's files, unpacked), then handle(batch, context) where each
    request is {"body": bytes}; it needs one reply per request."""
    import importlib.util
    from types import SimpleNamespace

    spec = importlib.util.spec_from_file_location("handler", bundle / "torchserve" / "handler.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    classes = [v for v in vars(module).values() if isinstance(v, type) and v.__module__ == "handler"]
    assert len(classes) == 1
    context = SimpleNamespace(system_properties={"model_dir": str(bundle), "gpu_id": None}, manifest={"model": {"modelName": "model"}})
    handler = classes[0]()
    handler.initialize(context)
    batch = [{"body": json.dumps({"text": "123+456="}).encode()}, {"data": {"input_ids": [[1, 999]]}}, {"body": b"not json"}]
    replies = handler.handle(batch, context)
    assert len(replies) == 3
    assert replies[0] == json.loads(run(bundle, "--text", "123+456=").stdout)
    assert "token id 999 is not in this model's vocabulary" in replies[1]["error"]
    assert replies[2]["error"].startswith("send {")
