"""Small transformers models built from configs (nothing is downloaded), for fidelity benchmarks.

``factory(name)`` returns ``(model, example_inputs, loss_fn)`` like the examples' factories: the
model maps the inputs to one tensor (logits), ``loss_fn`` maps that to a scalar. Models are in
training mode (dropout on where the architecture has it), two layers, hidden size 128.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

HIDDEN, LAYERS, HEADS, VOCAB, SEQ, BATCH = 128, 2, 4, 512, 256, 4
MODELS = ("hf_gpt2", "hf_llama", "hf_bert", "hf_t5", "hf_vit", "hf_mixtral")


class LogitsOnly(nn.Module):
    """A transformers model whose forward returns only ``.logits`` (one tensor to the loss)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, *args):
        return self.model(*args).logits


def _config(name: str):
    import transformers as T

    d, n, h = HIDDEN, LAYERS, HEADS
    if name == "hf_gpt2":
        return T.GPT2Config(vocab_size=VOCAB, n_positions=SEQ, n_embd=d, n_layer=n, n_head=h, bos_token_id=0,
                            eos_token_id=0)
    if name == "hf_llama":
        return T.LlamaConfig(vocab_size=VOCAB, hidden_size=d, intermediate_size=4 * d, num_hidden_layers=n,
                             num_attention_heads=h, num_key_value_heads=h // 2, max_position_embeddings=SEQ)
    if name == "hf_bert":
        return T.BertConfig(vocab_size=VOCAB, hidden_size=d, num_hidden_layers=n, num_attention_heads=h,
                            intermediate_size=4 * d, max_position_embeddings=SEQ)
    if name == "hf_t5":
        return T.T5Config(vocab_size=VOCAB, d_model=d, d_kv=d // h, d_ff=4 * d, num_layers=n,
                          num_decoder_layers=n, num_heads=h)
    if name == "hf_vit":
        return T.ViTConfig(image_size=64, patch_size=8, hidden_size=d, num_hidden_layers=n,
                           num_attention_heads=h, intermediate_size=4 * d, num_labels=10)
    if name == "hf_mixtral":
        return T.MixtralConfig(vocab_size=VOCAB, hidden_size=d, intermediate_size=2 * d, num_hidden_layers=n,
                               num_attention_heads=h, num_key_value_heads=h // 2, num_local_experts=4,
                               num_experts_per_tok=2, max_position_embeddings=SEQ)
    raise KeyError(f"unknown model {name!r}; choose from {', '.join(MODELS)}")


def _model_class(name: str):
    import transformers as T

    return {"hf_gpt2": T.GPT2LMHeadModel, "hf_llama": T.LlamaForCausalLM, "hf_bert": T.BertForMaskedLM,
            "hf_t5": T.T5ForConditionalGeneration, "hf_vit": T.ViTForImageClassification,
            "hf_mixtral": T.MixtralForCausalLM}[name]


def factory(name: str):
    """(model, example_inputs, loss_fn) of a small transformers model, seeded."""
    torch.manual_seed(0)
    config = _config(name)
    config._attn_implementation = "sdpa"
    model = LogitsOnly(_model_class(name)(config)).train()
    if name == "hf_vit":
        labels = torch.randint(0, 10, (BATCH,))
        return model, (torch.randn(BATCH, 3, 64, 64),), lambda logits: F.cross_entropy(logits, labels)
    tokens = torch.randint(0, VOCAB, (BATCH, SEQ))
    targets = torch.randint(0, VOCAB, (BATCH, SEQ))
    inputs = (tokens, torch.ones_like(tokens), tokens) if name == "hf_t5" else (tokens,)
    return model, inputs, lambda logits: F.cross_entropy(logits.reshape(-1, VOCAB), targets.reshape(-1))
