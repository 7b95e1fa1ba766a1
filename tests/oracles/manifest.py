"""How the oracle scripts write a manifest (NAME.json beside NAME.npz and NAME.onnx), read by
tests/methods/test_oracles.py: sorted keys, one-space indent, a final newline (stable diffs)."""

import json
import os


def write_manifest(folder: str, name: str, manifest: dict) -> None:
    with open(os.path.join(folder, f"{name}.json"), "w") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
        f.write("\n")
