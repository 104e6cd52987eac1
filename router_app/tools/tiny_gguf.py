"""Write tiny random-weight llama GGUF models for the demo and the tests.

The models are real llama.cpp models (2 layers, F32, a 448-token SentencePiece vocab with a
ChatML template), deterministic by seed, and small (~0.6 MB). Their replies are gibberish,
but always printable ASCII: embedding channel 0 is a constant that acts as a bias after
RMSNorm, and the output rows of byte, control and unknown tokens are pushed down on that
channel, so generation never emits them (and never stops before max_tokens).

With chat_ui (the demo's models, for Open-WebUI): 1769 tokens whose multi-character pieces make JSON
and English ~2.3 characters a token, and a template that renders the request's tools (~1.3 MB).

    python -m router_app.tools.tiny_gguf OUT.gguf --name tiny-a --seed 1 [--ctx 16384 --chat-ui]
"""

from __future__ import annotations

import argparse
from pathlib import Path

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# ChatML that also renders the request's tools into a system block, as real models' templates do, so a chat UI's
# tools take context (Open-WebUI's ~21 KB of built-in tools: ~9000 tokens with chat_ui's vocab).
CHATML_TOOLS_TEMPLATE = (
    "{% if tools %}{{ '<|im_start|>system\nYou may call these tools:\n' }}"
    "{% for tool in tools %}{{ tool | tojson }}{{ '\n' }}{% endfor %}{{ '<|im_end|>\n' }}{% endif %}" + CHATML_TEMPLATE
)

_WORD_TEXT = (
    "the of and to in is it you that he was for on are with as his they be at one have this from or had "
    "by word but what some we can out other were all there when up use your how said an each she which "
    "do their time if will way about many then them write would like so these her long make thing see "
    "him two has look more day could go come did number sound no most people my over know water than "
    "call first who may down side been now find any new work part take get place made live where after "
    "back little only round man "
)

VOCAB_SIZE = 448

# Extra words for chat_ui: what chat UIs send (JSON tool schemas, prompts), so text is a few chars a token.
_CHAT_TEXT = (
    "type function name description parameters properties required object string integer number boolean "
    "array items enum default null true false content role user assistant system tool tools query search "
    "notes note chat chats knowledge memory memories calendar event events automation automations time date "
    "timestamp current get list create update delete view read write file files id ids title text limit "
    "offset page start end query results result optional format value values message messages model models "
    "return returns the of and to in is it for on are with as be at by this that from or an if not can will "
    "you your user's search_notes search_chats view_note view_chat get_current_timestamp "
)


def _chat_pieces() -> list[str]:
    """Pieces for chat_ui, each with all its prefixes (SPM merges pairs, so every step must be a token)."""
    pieces: list[str] = []
    for word in _CHAT_TEXT.split():
        for form in (word, "\u2581" + word, '"' + word, '"' + word + '"', '"' + word + '":'):
            for end in range(2, len(form) + 1):
                if form[:end] not in pieces:
                    pieces.append(form[:end])
    return [*pieces, '":', '",', '", ', '": ', '{"', '"}', "}}", "}]", "},", "[{", '["', '"]']


def build_vocab(chat_ui: bool = False) -> tuple[list[str], list[float], list[int]]:
    """Tokens, scores and token types of the SPM vocab (types: 1 normal, 2 unknown, 3 control, 6 byte).

    chat_ui adds some 1300 multi-character pieces: JSON and English take ~2.3 characters a token instead of ~1.
    """
    tokens = ["<unk>", "<s>", "</s>"]
    types = [2, 3, 3]
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [6] * 256
    tokens += ["<|im_start|>", "<|im_end|>"]
    types += [3, 3]
    pieces = ["\u2581"] + [chr(c) for c in range(0x21, 0x7F)]
    pieces += ["\u2581" + w for w in _WORD_TEXT.split()]
    for piece in pieces:
        if len(tokens) >= VOCAB_SIZE:
            break
        if piece not in tokens:
            tokens.append(piece)
            types.append(1)
    while len(tokens) < VOCAB_SIZE:
        tokens.append(f"\u2581w{len(tokens)}")
        types.append(1)
    scores = [0.0 if t != 1 else -float(i) / 100 for i, t in enumerate(types)]
    if chat_ui:
        # Longer pieces score higher, so the longest merge available is taken first.
        for piece in _chat_pieces():
            if piece not in tokens:
                tokens.append(piece)
                types.append(1)
                scores.append(float(len(piece)))
    return tokens, scores, types


def write_model(
    path: Path | str,
    *,
    name: str = "tiny",
    seed: int = 1,
    layers: int = 2,
    dim: int = 64,
    heads: int = 4,
    ff: int = 128,
    ctx: int = 2048,
    chat_template: bool = True,
    chat_ui: bool = False,
    head_dim: int | None = None,
) -> Path:
    """Write a tiny llama GGUF to `path` and return the path.

    chat_ui: fit for a chat UI such as Open-WebUI (the demo): a denser vocab, and a template that renders tools.
    head_dim: per-head width, set explicitly (attention.key_length/value_length) instead of dim // heads, so a
    model with few weights can have a wide KV cache (scripts/gpu_check.py: tens of GB of VRAM from a small file).
    """
    import gguf
    import numpy as np

    rng = np.random.default_rng(seed)
    tokens, scores, types = build_vocab(chat_ui)
    vocab = len(tokens)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name(name)
    writer.add_context_length(ctx)
    writer.add_embedding_length(dim)
    writer.add_block_count(layers)
    writer.add_feed_forward_length(ff)
    writer.add_head_count(heads)
    writer.add_head_count_kv(heads)
    width = head_dim or dim // heads
    if head_dim is not None:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(width)  # llama: n_rot must be the head width (b11312 src/llama-model.cpp:1450-1452)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_unk_token_id(0)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(tokens.index("<|im_end|>"))
    writer.add_add_bos_token(False)
    if chat_template:
        writer.add_chat_template(CHATML_TOOLS_TEMPLATE if chat_ui else CHATML_TEMPLATE)

    def weights(*shape: int, scale: float = 0.02) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    embeddings = weights(vocab, dim, scale=0.5)
    embeddings[:, 0] = 4.0  # constant channel: a bias after RMSNorm
    output = weights(vocab, dim, scale=0.5)
    output[:, 0] = 0.0
    banned = np.array([t != 1 for t in types])
    output[banned, 0] = -10.0
    writer.add_tensor("token_embd.weight", embeddings)
    writer.add_tensor("output_norm.weight", np.ones(dim, dtype=np.float32))
    writer.add_tensor("output.weight", output)
    for layer in range(layers):
        prefix = f"blk.{layer}."
        writer.add_tensor(prefix + "attn_norm.weight", np.ones(dim, dtype=np.float32))
        writer.add_tensor(prefix + "attn_q.weight", weights(heads * width, dim))
        writer.add_tensor(prefix + "attn_k.weight", weights(heads * width, dim))
        writer.add_tensor(prefix + "attn_v.weight", weights(heads * width, dim))
        writer.add_tensor(prefix + "attn_output.weight", weights(dim, heads * width))
        writer.add_tensor(prefix + "ffn_norm.weight", np.ones(dim, dtype=np.float32))
        writer.add_tensor(prefix + "ffn_gate.weight", weights(ff, dim))
        writer.add_tensor(prefix + "ffn_up.weight", weights(ff, dim))
        writer.add_tensor(prefix + "ffn_down.weight", weights(dim, ff))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", type=Path)
    parser.add_argument("--name", default="tiny")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--ctx", type=int, default=2048)
    parser.add_argument("--chat-ui", action="store_true", help="denser vocab and a template that renders tools")
    args = parser.parse_args(argv)
    print(
        write_model(args.path, name=args.name, seed=args.seed, layers=args.layers, ctx=args.ctx, chat_ui=args.chat_ui)
    )


if __name__ == "__main__":
    main()
