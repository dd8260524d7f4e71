"""An export bundle: a model packaged for serving, written atomically into one directory.

    model.pt               state_dict (always)
    model.onnx             ONNX (torch.export-based exporter), dynamic batch / sequence length
    model.torchscript.pt   TorchScript (traced; deprecated upstream since PyTorch 2.11, kept for TorchServe)
    model.pt2              torch.export's ExportedProgram (`torch.export.load(path).module()`)
    hf/                    a Hugging Face model's save_pretrained (and its tokenizer): loads with
                           AutoModelForCausalLM.from_pretrained(bundle / "hf")
    model_config.json  training_config.yaml  task_spec.json
    tokenizer.json or tokenizer/   the tokenizer, when the trainer has one (experiments do)
    inference.py  requirements.txt  README.md  Dockerfile  torchserve/   (from templates/)
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
from importlib.metadata import PackageNotFoundError, version
from importlib.resources import files
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from trainyard.data.tokenizer import CharTokenizer
from trainyard.engine.checkpoint import atomic_directory, describe
from trainyard.engine.task import extract_logits
from trainyard.engine.trainable import has_adapters


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
    merge_adapters: bool = True,
) -> Path:
    """Write an export bundle for `model` into `out_dir` (replaced atomically). A model with
    adapters (PEFT) is exported with them merged into its weights, a plain model of its base's
    architecture; with `merge_adapters=False` as it is (`hf/` then holds the adapters alone,
    which load onto the base they were trained on)."""
    out_dir = Path(out_dir)
    model = copy.deepcopy(model).cpu().eval()
    if has_adapters(model) and merge_adapters:
        model = model.merge_and_unload()
    wrapped = _LogitsOnly(model)
    example = example_input.cpu()
    with atomic_directory(out_dir) as tmp:
        torch.save(model.state_dict(), tmp / "model.pt")
        for fmt in formats:
            try:
                _EXPORTERS[fmt](wrapped, example, tmp)
            except Exception as e:  # noqa: BLE001 - report which format failed and why
                raise RuntimeError(f"export to {fmt} failed ({type(e).__name__}: {e}); drop {fmt!r} from export_formats to skip it") from e
        if "hf" in formats and hasattr(tokenizer, "save_pretrained"):  # hf/ is a whole model directory: its tokenizer too
            tokenizer.save_pretrained(str(tmp / "hf"))
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


def _hf(model: nn.Module, example: torch.Tensor, out: Path) -> None:
    inner = model.model  # the user's module, inside _LogitsOnly
    if not hasattr(inner, "save_pretrained"):
        raise TypeError(f"{type(inner).__name__} is not a Hugging Face model (it has no save_pretrained)")
    inner.save_pretrained(str(out / "hf"))


def _load_hf(bundle: Path):
    import transformers

    if (bundle / "hf" / "adapter_config.json").is_file():  # adapters alone: onto their base, as peft loads them
        import peft

        adapters = json.loads((bundle / "hf" / "adapter_config.json").read_text())
        classification = adapters.get("task_type") == "SEQ_CLS"
        auto = peft.AutoPeftModelForSequenceClassification if classification else peft.AutoPeftModelForCausalLM
        with warnings.catch_warnings():  # peft asks transformers' deprecated is_gradient_checkpointing
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.* is deprecated", category=FutureWarning)
            model = auto.from_pretrained(str(bundle / "hf")).eval()
        return lambda x: model(input_ids=x).logits
    config = transformers.AutoConfig.from_pretrained(str(bundle / "hf"))
    classification = any(a.endswith("ForSequenceClassification") for a in config.architectures or ())
    auto = transformers.AutoModelForSequenceClassification if classification else transformers.AutoModelForCausalLM
    model = auto.from_pretrained(str(bundle / "hf"), local_files_only=True).eval()
    return lambda x: model(x).logits


def _torchscript(model: nn.Module, example: torch.Tensor, out: Path) -> None:
    with _quiet():
        traced = torch.jit.trace(model, example, check_trace=False)
        traced.save(str(out / "model.torchscript.pt"))


def _pt2(model: nn.Module, example: torch.Tensor, out: Path) -> None:
    with _quiet():
        program = torch.export.export(model, (example,), dynamic_shapes={"input_ids": _dynamic_dims(example)})
        torch.export.save(program, str(out / "model.pt2"))


_EXPORTERS = {"onnx": _onnx, "torchscript": _torchscript, "pt2": _pt2, "hf": _hf}


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


_LOADERS = {"onnx": _load_onnx, "torchscript": _load_torchscript, "pt2": _load_pt2, "hf": _load_hf}


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
    (out / "model_config.json").write_text(json.dumps(model_config or {}, indent=1))
    (out / "task_spec.json").write_text(json.dumps(task_spec or {}, indent=1))
    (out / "training_config.yaml").write_text(yaml.safe_dump(training_config or {}, sort_keys=False))
    (out / "inference.py").write_text(_template("inference.py"))
    tokenizer_line = _write_tokenizer(out, tokenizer)
    (out / "requirements.txt").write_text(_requirements(formats, hf_tokenizer=(out / "tokenizer").is_dir()))
    shape = "x".join(["batch", "seq_len"][: example.dim()]) if example.dim() <= 2 else str(tuple(example.shape))
    (out / "README.md").write_text(_template("README.md").format(formats=", ".join(formats) or "state_dict only", shape=shape, tokenizer_line=tokenizer_line))
    (out / "Dockerfile").write_text(_template("Dockerfile"))
    (out / "torchserve").mkdir()
    for name in ("config.properties", "handler.py"):
        (out / "torchserve" / name).write_text(_template(f"torchserve/{name}"))


def _template(name: str) -> str:
    """A file of the bundle as it ships in `templates/` (package data)."""
    return files("trainyard.export").joinpath("templates", *name.split("/")).read_text()


def _write_tokenizer(out: Path, tokenizer: Any) -> str:
    """The tokenizer, so the bundle takes text: trainyard's character tokenizer as
    tokenizer.json, a Hugging Face one as its own files in tokenizer/."""
    if tokenizer is None:
        return "No tokenizer came with the model: send token ids."
    if isinstance(tokenizer, CharTokenizer):
        (out / "tokenizer.json").write_text(json.dumps(tokenizer.to_spec()))
        return "The tokenizer (`tokenizer.json`) travels with it: send text or token ids."
    if hasattr(tokenizer, "save_pretrained"):
        tokenizer.save_pretrained(str(out / "tokenizer"))
        return "The Hugging Face tokenizer (`tokenizer/`) travels with it: send text or token ids."
    return f"Its tokenizer ({type(tokenizer).__name__}) cannot be saved: send token ids."


def _requirements(formats, hf_tokenizer: bool) -> str:
    """What inference.py needs, pinned to the versions the bundle was exported (and
    verified) with; PyTorch's CPU build, from its own index."""
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
