"""The export bundle as a user gets it from `trainyard train ... export_bundle=true`: its
tokenizer takes text, its requirements are pinned, inference.py answers what the model
answers, refuses bad ids in one line, and serves HTTP as the Dockerfile says."""

import ast
import json
import socket
import subprocess
import sys
import time
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


@pytest.mark.parametrize(("args", "message"), [
    (["5", "999"], "inference.py: token id 999 is not in this model's vocabulary (integers 0 to "),
    (["--text", "12+x="], "inference.py: characters ['x'] are not in this model's tokenizer"),
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
