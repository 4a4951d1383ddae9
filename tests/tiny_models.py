"""Tiny random-weight models and a word-level tokenizer, so unit tests need no download."""
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (BertConfig, BertModel, Gemma3ForCausalLM, Gemma3TextConfig, GPT2Config, GPT2LMHeadModel,
                          LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM, PreTrainedTokenizerFast)

VOCAB = 128
WORDS = ["[PAD]", "[UNK]", "[BOS]"] + [f"w{i}" for i in range(VOCAB - 3)]


def tiny_config(family: str, **overrides):
    common = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    if family == "llama":
        return LlamaConfig(**{**common, **overrides})
    if family == "mistral":
        return MistralConfig(**{**common, "sliding_window": 3, **overrides})
    if family == "gemma3":
        return Gemma3TextConfig(**{**common, "head_dim": 8, "sliding_window": 3, "query_pre_attn_scalar": 8,
                                   "layer_types": ["sliding_attention", "full_attention"] * 2, **overrides})
    if family == "gpt2":
        return GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=3, n_head=4, n_positions=256, **overrides)
    if family == "bert":
        return BertConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                          num_attention_heads=4, max_position_embeddings=256, **overrides)
    raise ValueError(family)


STOCK_CLASSES = {"llama": LlamaForCausalLM, "mistral": MistralForCausalLM, "gemma3": Gemma3ForCausalLM,
                 "gpt2": GPT2LMHeadModel, "bert": BertModel}


def tiny_stock_model(family: str, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    model = STOCK_CLASSES[family](tiny_config(family, **overrides)).eval()
    # Random init gives near-uniform attention; sharper weights make the ID test discriminate.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "q_proj" in name or "k_proj" in name or "c_attn" in name or "query" in name or "key" in name:
                p.mul_(25.0)
    return model


def tiny_tokenizer(padding_side: str = "right") -> PreTrainedTokenizerFast:
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="[PAD]", unk_token="[UNK]",
                                  bos_token="[BOS]")
    tok.padding_side = padding_side
    return tok


def random_prompts(n: int, seed: int = 0, lo: int = 1, hi: int = 12) -> list[str]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(lo, hi + 1, (n,), generator=g).tolist()
    return [" ".join(f"w{int(i)}" for i in torch.randint(0, VOCAB - 3, (k,), generator=g)) for k in lengths]
