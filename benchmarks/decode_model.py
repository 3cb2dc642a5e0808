"""Make the model benchmarks/decode.py times: a Llama-shaped decoder (6 layers, grouped-query
attention, RoPE, random weights, a word-level tokenizer) saved as a Hugging Face checkpoint
folder and exported by optimum (text-generation-with-past) to ONNX.

Runs in an export environment (torch, transformers, optimum-onnx), never in the test suite:

    python benchmarks/decode_model.py OUT_DIR

OUT_DIR/hf holds the checkpoint (config, weights, tokenizer: what onnxruntime-genai's builder
and optimum-intel read), OUT_DIR/onnx/model.onnx the optimum export that infer and the raw
ONNX Runtime loop run.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

CONFIG = dict(
    vocab_size=8192,
    hidden_size=512,
    intermediate_size=1408,
    num_hidden_layers=6,
    num_attention_heads=8,
    num_key_value_heads=2,
    max_position_embeddings=2048,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
    tie_word_embeddings=False,
)


def main(out: Path) -> None:
    import torch
    import transformers
    from optimum.exporters.onnx import main_export
    from tokenizers import Tokenizer, models, pre_tokenizers

    hf = out / "hf"
    hf.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    config = transformers.LlamaConfig(**CONFIG)
    model = transformers.LlamaForCausalLM(config).eval()
    model.save_pretrained(hf)
    transformers.GenerationConfig(
        bos_token_id=1, eos_token_id=2, pad_token_id=0, do_sample=False
    ).save_pretrained(hf)
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3}
    vocab.update({f"w{i}": i for i in range(4, CONFIG["vocab_size"])})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
    )
    fast.save_pretrained(hf)
    main_export(
        str(hf), output=str(out / "onnx"), task="text-generation-with-past", no_post_process=False
    )
    (out / "MODEL.json").write_text(
        json.dumps(
            {
                "config": CONFIG,
                "torch": torch.__version__,
                "transformers": transformers.__version__,
            },
            indent=1,
        )
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
