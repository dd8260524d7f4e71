"""Export bundle: a trained model packaged for serving, written atomically to `<run>/export`.

    model.pt               state_dict (always)
    model.onnx             ONNX (torch.export-based exporter), dynamic batch / sequence length
    model.torchscript.pt   TorchScript (traced; deprecated upstream since PyTorch 2.11, kept for TorchServe)
    model.pt2              torch.export's ExportedProgram (`torch.export.load(path).module()`)
    model_config.json  training_config.yaml  task_spec.json
    tokenizer.json or tokenizer/   the tokenizer, when the trainer has one (experiments do)
    inference.py  requirements.txt  README.md  Dockerfile   (inference.py: bundle_inference.py)
    torchserve/config.properties  torchserve/handler.py
    MANIFEST.json          size and sha256 of every file, and each graph's measured parity

The exported graphs take `input_ids` and return logits, whatever the model's own output
type. Each one is loaded back (ONNX through ONNX Runtime) and run on held-out inputs of two
batch sizes and two sequence lengths; its largest absolute difference from the eager model
goes into MANIFEST.json, and over `tolerance` the export fails naming the format. Export
failures name the format and write nothing.
"""

from __future__ import annotations

import copy
import json
import logging
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trainyard.engine.checkpoint import atomic_directory, describe
from trainyard.engine.model_config import model_config_dict
from trainyard.engine.data.collate import Collator
from trainyard.engine.hooks import Observer
from trainyard.engine.task import extract_logits


class _LogitsOnly(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return extract_logits(self.model(input_ids))


def export_model(
    model: nn.Module,
    example_input: torch.Tensor,
    out_dir: str | Path,
    formats: tuple[str, ...] = ("onnx", "torchscript", "pt2"),
    *,
    tolerance: float = 1e-3,
    training_config: dict | None = None,
    task_spec: dict | None = None,
    model_config: dict | None = None,
    tokenizer: Any = None,
) -> Path:
    """Write an export bundle for `model` into `out_dir` (replaced atomically)."""
    out_dir = Path(out_dir)
    wrapped = _LogitsOnly(copy.deepcopy(model).cpu().eval())
    example = example_input.cpu()
    with atomic_directory(out_dir) as tmp:
        torch.save(model.state_dict(), tmp / "model.pt")
        for fmt in formats:
            try:
                _EXPORTERS[fmt](wrapped, example, tmp)
            except Exception as e:  # noqa: BLE001 - report which format failed and why
                raise RuntimeError(f"export to {fmt} failed ({type(e).__name__}: {e}); drop {fmt!r} from export_formats to skip it") from e
        parity = verify(wrapped, tmp, formats, example, tolerance, vocab_size=(model_config or {}).get("vocab_size"))
        _write_metadata(tmp, formats, training_config, task_spec, model_config, example, tokenizer)
        files = {p.relative_to(tmp).as_posix(): describe(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
        (tmp / "MANIFEST.json").write_text(json.dumps({"files": files, "parity": parity}, indent=1))
    return out_dir


@torch.no_grad()
def verify(model: nn.Module, bundle: Path, formats, example: torch.Tensor, tolerance: float, vocab_size: int | None = None) -> dict:
    """Load each exported graph from `bundle` and compare its logits with `model`'s on held-out
    inputs (batch sizes 1 and 3; the example's sequence length and about half of it). Returns
    {format: {"max_abs_error", "tolerance", "inputs"}}; raises naming the first format that
    cannot be loaded, cannot run an input, or is over `tolerance`."""
    inputs = held_out_inputs(example, vocab_size)
    try:
        expected = [model(x) for x in inputs]
    except Exception as e:  # noqa: BLE001 - the model itself, not an exporter
        raise RuntimeError(
            f"the model cannot run the inputs the export is checked on, shapes {[tuple(x.shape) for x in inputs]} "
            f"({type(e).__name__}: {str(e).strip().splitlines()[0][:200]}): an exported graph must take any batch size and "
            "sequence length up to the example's"
        ) from e
    parity = {}
    for fmt in formats:
        try:
            run = _LOADERS[fmt](bundle)
        except Exception as e:  # noqa: BLE001 - which format, and why
            raise RuntimeError(f"export to {fmt} cannot be loaded back ({type(e).__name__}: {e}); drop {fmt!r} from export_formats to skip it") from e
        error = 0.0
        for x, want in zip(inputs, expected):
            try:
                got = torch.as_tensor(run(x))
            except Exception as e:  # noqa: BLE001 - e.g. a graph that kept the example's shape
                why = str(e).strip().splitlines()[-1][:200]  # TorchScript puts the cause last
                raise RuntimeError(
                    f"export to {fmt} cannot run input of shape {tuple(x.shape)} ({why if ':' in why else type(e).__name__ + ': ' + why}); "
                    f"drop {fmt!r} from export_formats to skip it"
                ) from e
            if got.shape != want.shape:
                raise RuntimeError(f"export to {fmt} gives logits of shape {tuple(got.shape)} for input {tuple(x.shape)}, the model {tuple(want.shape)}")
            error = max(error, (got.float() - want.float()).abs().max().item())
        if not error <= tolerance:  # NaN fails too
            raise RuntimeError(
                f"export to {fmt} does not reproduce the model: max abs logit error {error:.3g} > tolerance {tolerance:g} "
                f"on inputs {[tuple(x.shape) for x in inputs]}; drop {fmt!r} from export_formats, or raise export_tolerance"
            )
        parity[fmt] = {"max_abs_error": error, "tolerance": tolerance, "inputs": [list(x.shape) for x in inputs]}
    return parity


def held_out_inputs(example: torch.Tensor, vocab_size: int | None = None) -> list[torch.Tensor]:
    """Four inputs unlike the export example: batch sizes 1 and 3 by two sequence lengths
    (token ids drawn at random from the vocabulary, or from the example's ids)."""
    generator = torch.Generator().manual_seed(1234)
    if example.is_floating_point() or example.dim() < 2:
        return [torch.randn((batch, *example.shape[1:]), generator=generator, dtype=example.dtype) for batch in (1, 3)]
    length = example.shape[1]
    lengths = sorted({length, max(1, length // 2)}, reverse=True)
    pool = torch.arange(vocab_size) if isinstance(vocab_size, int) and vocab_size > 0 else example.unique()
    return [pool[torch.randint(len(pool), (batch, n), generator=generator)] for batch in (1, 3) for n in lengths]


def _dynamic_dims(example: torch.Tensor) -> dict:
    """Batch dynamic; sequence length too for token ids."""
    from torch.export import Dim

    return {0: Dim.AUTO, 1: Dim.AUTO} if example.dim() >= 2 and not example.is_floating_point() else {0: Dim.AUTO}


def _onnx(model: nn.Module, example: torch.Tensor, out: Path) -> None:
    with _quiet():
        torch.onnx.export(
            model,
            (example,),
            str(out / "model.onnx"),
            dynamo=True,
            input_names=["input_ids"],
            output_names=["logits"],
            dynamic_shapes={"input_ids": _dynamic_dims(example)},
            external_data=False,
            verbose=False,
        )


def _torchscript(model: nn.Module, example: torch.Tensor, out: Path) -> None:
    with _quiet():
        traced = torch.jit.trace(model, example, check_trace=False)
        traced.save(str(out / "model.torchscript.pt"))


def _pt2(model: nn.Module, example: torch.Tensor, out: Path) -> None:
    with _quiet():
        program = torch.export.export(model, (example,), dynamic_shapes={"input_ids": _dynamic_dims(example)})
        torch.export.save(program, str(out / "model.pt2"))


_EXPORTERS = {"onnx": _onnx, "torchscript": _torchscript, "pt2": _pt2}


def _load_onnx(bundle: Path):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    session = onnxruntime.InferenceSession(str(bundle / "model.onnx"), options, providers=["CPUExecutionProvider"])
    return lambda x: session.run(None, {"input_ids": x.numpy()})[0]


def _load_torchscript(bundle: Path):
    with _quiet():
        return torch.jit.load(str(bundle / "model.torchscript.pt")).eval()


def _load_pt2(bundle: Path):
    return torch.export.load(str(bundle / "model.pt2")).module()


_LOADERS = {"onnx": _load_onnx, "torchscript": _load_torchscript, "pt2": _load_pt2}


class _quiet:
    """Silence the exporters' own deprecation notices and info logging during export."""

    def __enter__(self):
        self._warnings = warnings.catch_warnings()
        self._warnings.__enter__()
        warnings.simplefilter("ignore")
        self._logger = logging.getLogger("torch.onnx")
        self._level = self._logger.level
        self._logger.setLevel(logging.ERROR)

    def __exit__(self, *exc):
        self._logger.setLevel(self._level)
        self._warnings.__exit__(*exc)


def _write_metadata(out: Path, formats, training_config, task_spec, model_config, example: torch.Tensor, tokenizer: Any) -> None:
    import yaml

    (out / "model_config.json").write_text(json.dumps(model_config or {}, indent=1))
    (out / "task_spec.json").write_text(json.dumps(task_spec or {}, indent=1))
    (out / "training_config.yaml").write_text(yaml.safe_dump(training_config or {}, sort_keys=False))
    (out / "inference.py").write_text((Path(__file__).with_name("bundle_inference.py")).read_text())
    tokenizer_line = _write_tokenizer(out, tokenizer)
    (out / "requirements.txt").write_text(_requirements(formats, hf_tokenizer=(out / "tokenizer").is_dir()))
    shape = "x".join(["batch", "seq_len"][: example.dim()]) if example.dim() <= 2 else str(tuple(example.shape))
    (out / "README.md").write_text(_README.format(formats=", ".join(formats) or "state_dict only", shape=shape, tokenizer_line=tokenizer_line))
    (out / "Dockerfile").write_text(_DOCKERFILE)
    (out / "torchserve").mkdir()
    (out / "torchserve" / "config.properties").write_text(_TORCHSERVE_CONFIG)
    (out / "torchserve" / "handler.py").write_text(_TORCHSERVE_HANDLER)


def _write_tokenizer(out: Path, tokenizer: Any) -> str:
    """The tokenizer, so the bundle takes text: trainyard's character tokenizer as
    tokenizer.json, a Hugging Face one as its own files in tokenizer/."""
    if tokenizer is None:
        return "No tokenizer came with the model: send token ids."
    if hasattr(tokenizer, "itos"):
        spec = {"itos": list(tokenizer.itos), "byte_level": bool(tokenizer.byte_level), "bos_token_id": tokenizer.bos_token_id,
                "eos_token_id": tokenizer.eos_token_id, "n_special": 3}
        (out / "tokenizer.json").write_text(json.dumps(spec))
        return "The tokenizer (`tokenizer.json`) travels with it: send text or token ids."
    if hasattr(tokenizer, "save_pretrained"):
        tokenizer.save_pretrained(str(out / "tokenizer"))
        return "The Hugging Face tokenizer (`tokenizer/`) travels with it: send text or token ids."
    return f"Its tokenizer ({type(tokenizer).__name__}) cannot be saved: send token ids."


def _requirements(formats, hf_tokenizer: bool) -> str:
    """What inference.py needs, pinned to the versions the bundle was exported (and
    verified) with; PyTorch's CPU build, from its own index."""
    from importlib.metadata import PackageNotFoundError, version

    def pinned(name: str) -> str:
        try:
            return f"{name}=={version(name).split('+')[0]}"
        except PackageNotFoundError:
            return name

    lines = ["# the versions this bundle was exported with; PyTorch's CPU build (a GPU machine: drop the index line)",
             "--extra-index-url https://download.pytorch.org/whl/cpu", pinned("torch"), pinned("numpy")]
    if "onnx" in formats:
        lines.append(pinned("onnxruntime"))
    if hf_tokenizer:
        lines.append(pinned("transformers"))
    return "\n".join(lines) + "\n"


_README = """# Exported model

Produced by trainyard. Formats: {formats}. Input `input_ids` ({shape}, int64); output: logits.
{tokenizer_line}

    pip install -r requirements.txt      # the versions it was exported with; CPU PyTorch
    python inference.py --text "..."     # or token ids: python inference.py 5 6 7
    python inference.py --serve          # POST /predictions {{"text": "..."}} or {{"input_ids": [[...]]}}

`model.pt` is the PyTorch state_dict; `model_config.json`, `task_spec.json` and
`training_config.yaml` describe how it was built and trained. `MANIFEST.json` lists the
sha256 of every file and, under "parity", each graph's largest logit error against the
trained model, measured when it was exported. `model.pt2`: `torch.export.load(path).module()`. Docker serves the same HTTP API:
`docker build -t model . && docker run -p 8080:8080 model`, then
`curl -d '{{"input_ids": [[1, 2]]}}' localhost:8080/predictions`. TorchServe: `torchserve/`.
Loading `model.torchscript.pt` runs the code in it: load bundles you trust.
"""

_DOCKERFILE = """FROM python:3.11-slim
WORKDIR /model
COPY . /model
RUN pip install --no-cache-dir -r requirements.txt
EXPOSE 8080
CMD ["python", "inference.py", "--serve", "--port", "8080"]
"""


_TORCHSERVE_CONFIG = """inference_address=http://0.0.0.0:8080
management_address=http://0.0.0.0:8081
metrics_address=http://0.0.0.0:8082
default_workers_per_model=1
"""

_TORCHSERVE_HANDLER = '''"""TorchServe handler for this bundle: requests go through inference.py, as with --serve.

    torch-model-archiver --model-name model --version 1.0 --handler torchserve/handler.py \\
        --extra-files inference.py,model_config.json,task_spec.json,<model.onnx or model.pt2>,<tokenizer.json>
    torchserve --start --model-store . --models model=model.mar --ts-config torchserve/config.properties

A request body is {"text": "..."} or {"input_ids": [[...]]}; the reply is inference.py's
JSON, or {"error": "..."} for a bad request. Needs no `ts` import: TorchServe calls
initialize(context) and handle(data, context) on the one class defined here.
"""

import json
import sys
from pathlib import Path


class Handler:
    def __init__(self):
        self.initialized = False
        self.bundle = None
        self.bad_input = ValueError

    def initialize(self, context):
        model_dir = Path(context.system_properties["model_dir"])
        sys.path.insert(0, str(model_dir))
        import inference

        self.bundle = inference.Bundle(model_dir)
        self.bad_input = inference.BadInput
        self.initialized = True

    def preprocess(self, data):
        bodies = []
        for row in data:
            body = row.get("body") if row.get("body") is not None else row.get("data")
            if isinstance(body, (bytes, bytearray)):
                body = body.decode("utf-8")
            if isinstance(body, str):
                try:
                    body = json.loads(body)
                except ValueError:
                    body = None
            bodies.append(body)
        return bodies

    def inference(self, bodies):
        replies = []
        for body in bodies:
            try:
                replies.append(self.bundle.predict(self.bundle.ids(body)))
            except self.bad_input as e:
                replies.append({"error": str(e)})
        return replies

    def postprocess(self, replies):
        return replies  # one reply per request of the batch

    def handle(self, data, context):
        if not self.initialized:
            self.initialize(context)
        return self.postprocess(self.inference(self.preprocess(data)))
'''


class ExportBundle(Observer):
    """`export_bundle=True`: export the trained model into `<run_dir>/export` when training
    ends (main rank), and put the path in `results["export_path"]`."""

    def __init__(self):
        self.train_dataset: Any = None

    def on_train_begin(self, trainer, train_dataset, val_dataset) -> None:
        self.train_dataset = train_dataset

    def on_train_end(self, trainer, results) -> None:
        if not trainer.context.is_main or trainer.context.shards_state:  # a shard is no model: the driver exports it
            return
        results["export_path"] = str(export_trained(trainer, self.train_dataset, Path(results["run_dir"]) / "export", results["task"]))


def export_trained(trainer: Any, train_dataset: Any, out_dir: Path, task: str) -> Path:
    """Export `trainer.model` with its configs, the first two training samples as the
    example input."""
    samples = [train_dataset[i] for i in range(min(2, len(train_dataset)))]
    example = Collator(trainer.pad_token_id)(samples)["input_ids"]
    spec = trainer.task_spec.to_dict() if trainer.task_spec is not None else {"name": task}
    cfg = trainer.training_config
    return export_model(
        trainer.model, example, out_dir, cfg.export_formats, tolerance=cfg.export_tolerance,
        training_config=cfg.to_dict(), task_spec=spec, model_config=model_config_dict(trainer.config),
        tokenizer=trainer.tokenizer,
    )
