"""Only what pyproject.toml cannot say: install `trainyard_legacy_imports.pth` into
site-packages, so that TRAINYARD_LEGACY_IMPORTS=1 enables the legacy import paths in any
Python process without a code change (the line does nothing unless the variable is set).
Editable installs do not carry it; there, use `python -m trainyard.compat script.py`."""
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

PTH = "trainyard_legacy_imports.pth"


class BuildWithPth(build_py):
    def run(self):
        super().run()
        target = Path(self.build_lib) / PTH
        self.copy_file(str(Path("platform") / PTH), str(target), preserve_mode=0)

    def get_outputs(self, include_bytecode=True):
        return [*super().get_outputs(include_bytecode), str(Path(self.build_lib) / PTH)]

    def get_output_mapping(self):
        mapping = super().get_output_mapping()
        mapping[str(Path(self.build_lib) / PTH)] = str(Path("platform") / PTH)
        return mapping


setup(cmdclass={"build_py": BuildWithPth})
