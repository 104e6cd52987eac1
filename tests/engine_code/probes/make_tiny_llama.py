"""Tiny random Llama models in Hugging Face format, built offline (run with the vLLM venv's Python: needs torch,
transformers and tokenizers).

    python make_tiny_llama.py OUT_DIR:SEED [OUT_DIR:SEED ...]

One byte-level BPE tokenizer (vocabulary 512, trained here on a built-in text, with a ChatML chat template), then
per output a LlamaForCausalLM (2 layers, hidden 128, 4 heads, 2 KV heads, 2048 positions; ~0.4 M parameters, bf16,
safetensors) with random weights from its seed. Different seeds answer differently, which is what the router's
wake-integrity fingerprint compares.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
SPECIALS = ["<unk>", "<s>", "</s>", "<pad>", "<|im_start|>", "<|im_end|>"]
CORPUS = (
    "The capital of France is Paris. Hello, how are you? I am fine, thank you. What is the weather like today? "
    "It is sunny and warm. Tell me a story about a small model that answered every question with a few words. "
    "system user assistant content role: one two three four five six seven eight nine ten 0 1 2 3 4 5 6 7 8 9 "
    "a b c d e f g h i j k l m n o p q r s t u v w x y z , . ; : ! ? ' \" ( ) [ ] { } - _ / \\ "
)


def tokenizer():  # -> transformers.PreTrainedTokenizerFast
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator([CORPUS] * 16, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token="<s>",
        eos_token="<|im_end|>",
        unk_token="<unk>",
        pad_token="<pad>",
        model_max_length=2048,
    )
    fast.chat_template = CHATML
    return fast


def main(targets: list[str]) -> int:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    fast = tokenizer()
    for target in targets:
        folder, _, seed = target.rpartition(":")
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        fast.save_pretrained(out)
        config = LlamaConfig(
            vocab_size=(len(fast) + 63) // 64 * 64,
            hidden_size=128,
            intermediate_size=256,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=32,
            max_position_embeddings=2048,
            bos_token_id=fast.bos_token_id,
            eos_token_id=fast.eos_token_id,
            pad_token_id=fast.pad_token_id,
            tie_word_embeddings=False,
        )
        torch.manual_seed(int(seed))
        LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(out)
        ids = {"bos_token_id": fast.bos_token_id, "eos_token_id": fast.eos_token_id, "pad_token_id": fast.pad_token_id}
        (out / "generation_config.json").write_text(json.dumps(ids))  # no sampling defaults: the request's own
        print(out, sum(p.stat().st_size for p in out.iterdir()), "bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
