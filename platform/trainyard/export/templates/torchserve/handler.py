"""TorchServe handler for this bundle: requests go through inference.py, as with --serve.

    torch-model-archiver --model-name model --version 1.0 --handler torchserve/handler.py \
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
