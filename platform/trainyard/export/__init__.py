"""Export and serving: a trained model as a bundle that serves without trainyard.

    bundle.py    export_model: write a bundle for any model (ONNX, TorchScript, torch.export,
                 the state_dict, configs, tokenizer, inference.py, Docker, TorchServe), each
                 graph loaded back and checked against the model
    run.py       export_trained: a trained run's bundle (one way, in-process or on Ray), and
                 the ExportBundle observer of in-process runs
    templates/   the bundle's own files (inference.py, README.md, Dockerfile, torchserve/),
                 package data
"""
