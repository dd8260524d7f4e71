"""Run the exported model with nothing but this bundle's requirements.txt installed.

    python inference.py --text "123+456="        # text in (the bundle's tokenizer), prediction out
    python inference.py 5 6 7                    # token ids in
    python inference.py --serve --port 8080      # HTTP: POST /predictions {"text": "..."} or {"input_ids": [[...]]}

Prints (and serves) JSON: the predicted ids, and their text when the bundle has a tokenizer.
A language model's prediction is its greedy continuation (up to --max-new-tokens, or its
end token); a classifier's is the class id. (trainyard copies this file into every export
bundle as inference.py; it imports nothing of trainyard.)
"""

import argparse
import json
import re
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


class BadInput(ValueError):
    """The request, not the model: reported in one line (exit 2, or HTTP 400)."""


class CharTokenizer:
    """trainyard's character tokenizer, from the bundle's tokenizer.json."""

    def __init__(self, spec):
        self.itos, self.byte_level = spec["itos"], spec["byte_level"]
        self.stoi = {s: i for i, s in enumerate(self.itos)}
        self.bos, self.eos, self.n_special = spec["bos_token_id"], spec["eos_token_id"], spec["n_special"]
        self.prompt_pattern, self.usage = spec.get("prompt_pattern"), spec.get("usage")  # what its text means

    def encode(self, text):
        if self.byte_level:
            text = text.encode("utf-8").decode("latin-1")
        unknown = sorted({c for c in text if c not in self.stoi})
        if unknown:
            raise BadInput(f"characters {unknown} are not in this model's tokenizer")
        if self.prompt_pattern and not re.fullmatch(self.prompt_pattern, text):
            raise BadInput(f"{text!r} is not a prompt this model was trained on: {self.usage}")
        return [self.bos] + [self.stoi[c] for c in text]

    def decode(self, ids):
        text = "".join(self.itos[i] for i in ids if i >= self.n_special)
        return text.encode("latin-1").decode("utf-8", errors="replace") if self.byte_level else text


class HFTokenizer:
    """A Hugging Face tokenizer, from the bundle's tokenizer/ directory."""

    def __init__(self, path):
        from transformers import AutoTokenizer

        self.tok = AutoTokenizer.from_pretrained(str(path))
        self.eos = self.tok.eos_token_id

    def encode(self, text):
        return self.tok(text)["input_ids"]

    def decode(self, ids):
        return self.tok.decode(ids, skip_special_tokens=True)


class Bundle:
    def __init__(self, root=HERE):
        self.root = Path(root)
        self.config = json.loads((self.root / "model_config.json").read_text())
        self.task = json.loads((self.root / "task_spec.json").read_text()).get("name", "language_modeling")
        self.tokenizer = self._tokenizer()
        self.run = self._model()

    def _tokenizer(self):
        if (self.root / "tokenizer.json").exists():
            return CharTokenizer(json.loads((self.root / "tokenizer.json").read_text()))
        if (self.root / "tokenizer").is_dir():
            return HFTokenizer(self.root / "tokenizer")
        return None

    def _model(self):
        """ids (equal-length rows) -> logits (numpy): ONNX Runtime, else torch.export's
        program, else TorchScript."""
        if (self.root / "model.onnx").exists():
            import onnxruntime

            session = onnxruntime.InferenceSession(str(self.root / "model.onnx"), providers=["CPUExecutionProvider"])
            return lambda ids: session.run(None, {"input_ids": np.asarray(ids, dtype=np.int64)})[0]
        import torch

        if (self.root / "model.pt2").exists():
            model = torch.export.load(str(self.root / "model.pt2")).module()
        else:
            model = torch.jit.load(str(self.root / "model.torchscript.pt")).eval()

        def run(ids):
            with torch.no_grad():
                return model(torch.as_tensor(ids, dtype=torch.long)).numpy()

        return run

    def ids(self, body):
        """The token ids of a request: {"text": str or [str]} or {"input_ids": [..] or [[..]]}."""
        if not isinstance(body, dict):
            raise BadInput('send {"text": "..."} or {"input_ids": [[...]]}')
        if "text" in body:
            if self.tokenizer is None:
                raise BadInput("this bundle has no tokenizer: send input_ids")
            texts = body["text"] if isinstance(body["text"], list) else [body["text"]]
            if not all(isinstance(t, str) for t in texts):
                raise BadInput("text must be a string or a list of strings")
            ids = [self.tokenizer.encode(t) for t in texts]
            if len({len(row) for row in ids}) > 1:
                raise BadInput("texts of different lengths: send them one at a time")
            return ids
        if "input_ids" in body:
            ids = body["input_ids"]
            return ids if isinstance(ids, list) and ids and isinstance(ids[0], list) else [ids]
        raise BadInput('send {"text": "..."} or {"input_ids": [[...]]}')

    def check(self, ids):
        vocab = self.config.get("vocab_size")
        if not isinstance(ids, list) or not ids or not all(isinstance(r, list) and r for r in ids) or len({len(r) for r in ids}) != 1:
            raise BadInput("input_ids must be a non-empty list of non-empty rows of one length, e.g. [[5, 6, 7]]")
        for row in ids:
            for i in row:
                if not isinstance(i, int) or isinstance(i, bool) or i < 0 or (vocab is not None and i >= vocab):
                    top = f"0 to {vocab - 1}" if vocab else "non-negative"
                    raise BadInput(f"token id {i!r} is not in this model's vocabulary (integers {top})")

    def predict(self, ids, max_new_tokens=32):
        self.check(ids)
        if self.task != "language_modeling":
            return {"input_ids": ids, "prediction": self.run(ids).argmax(-1).tolist()}
        max_len = self.config.get("max_seq_len")
        eos = getattr(self.tokenizer, "eos", None)
        rows, new, done = [list(r) for r in ids], [[] for _ in ids], [False] * len(ids)
        for _ in range(max_new_tokens):
            if max_len and len(rows[0]) >= max_len:
                break
            for r, token in enumerate(self.run(rows)[:, -1].argmax(-1).tolist()):
                rows[r].append(int(token))
                if not done[r]:
                    done[r] = token == eos
                    if not done[r]:
                        new[r].append(int(token))
            if all(done):
                break
        out = {"input_ids": ids, "prediction": new}
        if self.tokenizer is not None:
            out["text"] = [self.tokenizer.decode(row) for row in new]
            if getattr(self.tokenizer, "usage", None):
                out["how_to_read"] = self.tokenizer.usage
        return out


def serve(bundle, port, max_new_tokens):
    class Handler(BaseHTTPRequestHandler):
        def _reply(self, status, payload):
            body = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            if self.path == "/ping":
                self._reply(200, {"status": "ok"})
            else:
                self._reply(404, {"error": "GET /ping or POST /predictions"})

        def do_POST(self):
            if self.path != "/predictions":
                return self._reply(404, {"error": "POST /predictions"})
            try:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                self._reply(200, bundle.predict(bundle.ids(body), int(body.get("max_new_tokens", max_new_tokens))))
            except (BadInput, ValueError, TypeError) as e:
                self._reply(400, {"error": str(e)})

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("0.0.0.0", port), Handler)
    print(f"serving on http://0.0.0.0:{server.server_address[1]}/predictions", flush=True)
    server.serve_forever()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("ids", nargs="*", type=int, help="token ids")
    parser.add_argument("--text", help="text, encoded with the bundle's tokenizer")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--serve", action="store_true", help="serve HTTP instead")
    parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args(argv)
    bundle = Bundle()
    if args.serve:
        return serve(bundle, args.port, args.max_new_tokens)
    try:
        ids = bundle.ids({"text": args.text} if args.text is not None else {"input_ids": args.ids})
        print(json.dumps(bundle.predict(ids, args.max_new_tokens)))
    except BadInput as e:
        print(f"inference.py: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
