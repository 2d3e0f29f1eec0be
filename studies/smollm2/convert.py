"""A GGUF file into a plain safetensors model folder, through transformers.

transformers reads GGUF files itself (with the ``gguf`` package): it de-quantizes every tensor
into a dense ``LlamaForCausalLM`` and rebuilds the tokenizer and its chat template from the
file's metadata. The folder written here is what every later step (training, locate, merge,
evaluate) opens with a plain ``from_pretrained(folder)``.

Weights are saved in float32 by default: a Q4_1 weight is ``d * q + m`` with float16 ``d``
and ``m``, exact in float32 but rounded again in bfloat16 (``--dtype bfloat16`` halves the
folder, 270 MB instead of 540 MB, at that cost).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from mergekit_led.atomic import staged_directory
from mergekit_led.errors import AssetError

DTYPES = ("float32", "bfloat16")


@dataclass(frozen=True)
class Conversion:
    """What the conversion produced, for the manifest."""

    architecture: str
    parameters: int
    layers: int
    hidden_size: int
    vocabulary: int
    tied_embeddings: bool
    has_chat_template: bool
    dtype: str
    seconds: float  # reading and de-quantizing the GGUF file (tokenizer and weights)


def convert_gguf(gguf_path: str, out_dir: str, *, dtype: str = "float32") -> Conversion:
    """De-quantize ``gguf_path`` into the safetensors model folder ``out_dir`` (weights,
    config, generation config, tokenizer), written aside and renamed into place."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if dtype not in DTYPES:
        raise AssetError(f"Unknown dtype {dtype!r} for the converted model: use one of {DTYPES}.")
    try:
        import gguf  # noqa: F401  (transformers needs it to read the file)
    except ImportError:
        raise AssetError(
            "Reading a GGUF file needs the gguf package: pip install 'mergekit-led[real]'."
        ) from None
    folder, name = os.path.split(os.path.abspath(gguf_path))
    start = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(
        folder,
        gguf_file=name,
        dtype=getattr(torch, dtype),
        local_files_only=True,
        **_dequantize_option(),
    )
    seconds = time.perf_counter() - start
    if getattr(model, "hf_quantizer", None) is not None:
        # Newer transformers keep GGUF blocks packed unless told to de-quantize; a packed
        # model cannot be saved as plain safetensors, and the study needs dense weights.
        raise AssetError(
            f"transformers loaded {gguf_path} with its weights still quantized; "
            "this transformers version cannot de-quantize it into a dense model."
        )
    with staged_directory(out_dir) as stage:
        model.save_pretrained(stage)
        tokenizer.save_pretrained(stage)
    config = model.config
    return Conversion(
        architecture=type(model).__name__,
        parameters=sum(p.numel() for p in model.parameters()),
        layers=config.num_hidden_layers,
        hidden_size=config.hidden_size,
        vocabulary=len(tokenizer),
        tied_embeddings=bool(getattr(config, "tie_word_embeddings", False)),
        has_chat_template=bool(getattr(tokenizer, "chat_template", None)),
        dtype=dtype,
        seconds=round(seconds, 2),
    )


def _dequantize_option() -> dict:
    """``quantization_config=GgufConfig(dequantize=True)`` where transformers has it (it may
    otherwise keep the weights packed); older versions always de-quantize."""
    try:
        from transformers import GgufConfig
    except ImportError:
        return {}
    return {"quantization_config": GgufConfig(dequantize=True)}
